//! `hookline ingest` and `hookline worker` as separate processes sharing the queue file, as
//! they are deployed; the worker is stopped (SIGTERM) and started again while deliveries
//! keep arriving.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::http::free_port;
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

    // Each process exposes its own counters on /metrics.
    let metrics = async |port: u16| {
        client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let ingest_metrics = metrics(port).await;
    assert!(
        ingest_metrics.contains("hookline_ingest_requests_total{source=\"gh\",status=\"200\"} 4\n"),
        "{ingest_metrics}"
    );
    assert!(
        ingest_metrics.contains("hookline_publish_seconds_count 4\n"),
        "{ingest_metrics}"
    );
    let worker_metrics = metrics(worker_port).await;
    assert!(
        worker_metrics.contains("hookline_messages_total{outcome=\"ack\"} 3\n"),
        "the restarted worker processed the three that waited: {worker_metrics}"
    );
    assert!(
        worker_metrics.contains("hookline_queue_lag_seconds_count 3\n"),
        "{worker_metrics}"
    );

    terminate(worker);
    terminate(ingest);
}

#[tokio::test]
async fn gcp_log_format_is_what_cloud_logging_reads() {
    let env = TestEnv::new();
    let port = free_port();
    let child = Command::new(BIN)
        .args([
            "--config",
            env.config_path().to_str().unwrap(),
            "--log-format",
            "gcp",
            "ingest",
        ])
        .env("PORT", port.to_string())
        .env("GOOGLE_CLOUD_PROJECT", "proj-logs")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    assert!(
        wait_for(Duration::from_secs(20), async || client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok())
        .await
    );
    let body = ISSUES_OPENED.as_bytes();
    let mut headers = github_headers(GITHUB_SECRET, body, "issues", "logged-1");
    headers.push((
        "traceparent".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    ));
    headers.push(("x-request-id".into(), "req-logged-1".into()));
    let (status, _, _) = post(
        &format!("http://127.0.0.1:{port}/hooks/gh"),
        &headers,
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["severity"].is_string() && l["message"].is_string()),
        "{stderr}"
    );
    let accepted = lines
        .iter()
        .find(|l| l["message"] == "accepted")
        .unwrap_or_else(|| panic!("no accepted line: {stderr}"));
    assert_eq!(accepted["severity"], "INFO");
    assert_eq!(accepted["request_id"], "req-logged-1");
    assert_eq!(accepted["delivery_id"], "logged-1");
    assert_eq!(
        accepted["logging.googleapis.com/trace"],
        "projects/proj-logs/traces/4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert!(
        !stderr.contains("Webhook deliveries time out"),
        "no body in the logs"
    );
}
