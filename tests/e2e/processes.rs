//! `hookline ingest` and `hookline worker` as separate processes sharing the queue file, as
//! they are deployed; the worker is stopped (SIGTERM) and started again while deliveries
//! keep arriving.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_hookline");

fn spawn(env: &TestEnv, service: &str, port: u16) -> Child {
    Command::new(BIN)
        .args([
            "--config",
            env.config_path().to_str().unwrap(),
            "--log-format",
            "json",
            service,
        ])
        .env("PORT", port.to_string())
        .env_remove("HOOKLINE_TEST_SLACK_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "graceful exit expected, got {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    panic!("process did not exit within 10 s of SIGTERM");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn separate_ingest_and_worker_processes_share_the_queue_across_a_worker_restart() {
    let env = TestEnv::new();
    let port = free_port();
    let worker_port = free_port();
    let ingest = spawn(&env, "ingest", port);
    let worker = spawn(&env, "worker", worker_port);
    let url = format!("http://127.0.0.1:{port}/hooks/gh");
    let client = reqwest::Client::new();
    assert!(
        wait_for(Duration::from_secs(20), async || client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200))
        .await,
        "ingest process never became ready"
    );

    let body = ISSUES_OPENED.as_bytes();
    let send = async |delivery: &str| {
        post(
            &url,
            &github_headers(GITHUB_SECRET, body, "issues", delivery),
            body.to_vec(),
        )
        .await
        .0
    };
    assert!(
        wait_for(Duration::from_secs(20), async || client
            .get(format!("http://127.0.0.1:{worker_port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200))
        .await,
        "the worker serves /healthz on its PORT, as Cloud Run requires"
    );
    assert_eq!(send("p-0").await, 200);
    assert!(wait_for(Duration::from_secs(20), async || env.row_count() == 1).await);

    terminate(worker);
    for i in 1..=3 {
        assert_eq!(send(&format!("p-{i}")).await, 200);
    }
    assert_eq!(env.queue_depth().await, (3, 0), "waiting for the worker");

    let worker = spawn(&env, "worker", worker_port);
    assert!(
        wait_for(Duration::from_secs(20), async || env.row_count() == 4).await,
        "rows after restart: {}",
        env.row_count()
    );
    let ids = env.warehouse("SELECT id FROM events ORDER BY id");
    let ids: Vec<_> = ids.into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(ids, ["p-0", "p-1", "p-2", "p-3"]);
    assert_eq!(env.archived().len(), 4);

    terminate(worker);
    terminate(ingest);
}
