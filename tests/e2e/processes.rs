//! `hookline ingest` and `hookline worker` as separate processes sharing the queue file, as
//! they are deployed; the worker is stopped (SIGTERM) and started again while deliveries
//! keep arriving.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::http::free_port;
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_hookline");

fn spawn(env: &TestEnv, service: &str, port: u16) -> Child {
    spawn_with(env, service, port, None, Stdio::null())
}

/// `slack`: the webhook URL for the worker; `log`: where its JSON log lines go.
fn spawn_with(
    env: &TestEnv,
    service: &str,
    port: u16,
    slack: Option<&str>,
    log: impl Into<Stdio>,
) -> Child {
    let mut cmd = Command::new(BIN);
    match slack {
        Some(url) => cmd.env("HOOKLINE_TEST_SLACK_URL", url),
        None => cmd.env_remove("HOOKLINE_TEST_SLACK_URL"),
    };
    cmd.args([
        "--config",
        env.config_path().to_str().unwrap(),
        "--log-format",
        "json",
        service,
    ])
    .env("PORT", port.to_string())
    .env("RUST_LOG", "info")
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .unwrap()
}

/// Whether `url` answers 200 within 20 s (a process coming up).
async fn answers_200(url: &str) -> bool {
    let client = reqwest::Client::new();
    wait_for(Duration::from_secs(20), async || {
        client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await
}

fn terminate(child: Child) {
    let took = terminate_timed(child);
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
}

/// SIGTERM, then waits for a successful exit; panics after Cloud Run's 10 s.
fn terminate_timed(mut child: Child) -> Duration {
    let start = std::time::Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "graceful exit expected, got {status}");
            return start.elapsed();
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
        answers_200(&format!("http://127.0.0.1:{port}/readyz")).await,
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
        answers_200(&format!("http://127.0.0.1:{worker_port}/healthz")).await,
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
    assert!(answers_200(&format!("http://127.0.0.1:{port}/healthz")).await);
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

/// A Slack whose first answer takes `first_delay`; later ones are immediate.
struct SlowFirstSlack {
    first_delay: Duration,
    calls: std::sync::atomic::AtomicUsize,
}

impl wiremock::Respond for SlowFirstSlack {
    fn respond(&self, _: &wiremock::Request) -> wiremock::ResponseTemplate {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let ok = wiremock::ResponseTemplate::new(200).set_body_string("ok");
        if n == 0 {
            ok.set_delay(self.first_delay)
        } else {
            ok
        }
    }
}

/// Starts ingest and a worker whose Slack is slow on its first post, sends one `issues`
/// delivery, and SIGTERMs the worker once it is posting. Returns what the test inspects.
async fn sigterm_while_posting(
    first_delay: Duration,
) -> (TestEnv, Child, u16, wiremock::MockServer, Duration, String) {
    let env = TestEnv::new();
    let slack = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(SlowFirstSlack {
            first_delay,
            calls: 0.into(),
        })
        .mount(&slack)
        .await;
    let slack_url = format!("{}/hook", slack.uri());
    let port = free_port();
    let ingest = spawn(&env, "ingest", port);
    let log_path = env.dir.path().join("worker.log");
    let worker = spawn_with(
        &env,
        "worker",
        free_port(),
        Some(&slack_url),
        std::fs::File::create(&log_path).unwrap(),
    );
    assert!(
        answers_200(&format!("http://127.0.0.1:{port}/readyz")).await,
        "ingest process never became ready"
    );
    let body = ISSUES_OPENED.as_bytes();
    let (status, _, _) = post(
        &format!("http://127.0.0.1:{port}/hooks/gh"),
        &github_headers(GITHUB_SECRET, body, "issues", "drain-1"),
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    // Slack is the last step: once it has the request, the message is in flight.
    assert!(
        wait_for(Duration::from_secs(20), async || !slack
            .received_requests()
            .await
            .unwrap_or_default()
            .is_empty())
        .await,
        "the worker never posted to Slack"
    );
    let took = terminate_timed(worker);
    let log = std::fs::read_to_string(&log_path).unwrap();
    (env, ingest, port, slack, took, log)
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_message_finish() {
    let (env, ingest, _, slack, took, log) = sigterm_while_posting(Duration::from_secs(2)).await;
    assert!(
        took >= Duration::from_millis(1500),
        "it waited for Slack: {took:?}"
    );
    assert_eq!(env.row_count(), 1);
    assert_eq!(env.archived().len(), 1);
    assert_eq!(slack.received_requests().await.unwrap().len(), 1);
    assert_eq!(env.queue_depth().await, (0, 0), "acked before exit:\n{log}");
    assert!(!log.contains("drain deadline passed"), "{log}");
    terminate(ingest);
}

#[tokio::test]
async fn sigterm_nacks_what_cannot_finish_within_the_drain_deadline() {
    let (env, ingest, _, slack, took, log) = sigterm_while_posting(Duration::from_secs(60)).await;
    // 8 s of drain, then the nack: inside Cloud Run's 10 s.
    assert!(took >= Duration::from_secs(8), "drained first: {took:?}");
    assert!(
        log.contains("drain deadline passed; nacking what is still in flight"),
        "{log}"
    );
    assert!(
        log.contains("\"sink\":\"shutdown\""),
        "the nack names the shutdown:\n{log}"
    );
    // Nacked, not left to its lease: visible again within the queue's backoff (<= 200 ms).
    assert!(
        wait_for(Duration::from_millis(1500), async || env
            .queue_depth()
            .await
            == (1, 0))
        .await,
        "not handed back: {:?}",
        env.queue_depth().await
    );
    // The archive and the row were written before Slack; a new worker finds them done in
    // the ledger and posts to Slack again: the abandoned post is the documented window
    // (Slack may have had it), counted as a possible duplicate.
    let worker_port = free_port();
    let slack_url = format!("{}/hook", slack.uri());
    let worker = spawn_with(&env, "worker", worker_port, Some(&slack_url), Stdio::null());
    assert!(
        wait_for(Duration::from_secs(20), async || env.queue_depth().await
            == (0, 0))
        .await
    );
    assert_eq!(env.row_count(), 1);
    assert_eq!(env.archived().len(), 1);
    assert_eq!(slack.received_requests().await.unwrap().len(), 2);
    let metrics = reqwest::get(format!("http://127.0.0.1:{worker_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hookline_slack_possible_duplicates_total 1\n"),
        "{metrics}"
    );
    terminate(worker);
    terminate(ingest);
}
