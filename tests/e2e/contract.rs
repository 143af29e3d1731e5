//! The HTTP contract of `POST /hooks/{source}`: every status, its stable error code, and —
//! for every refusal — that nothing was enqueued.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use hookline_shared::envelope::Envelope;
use hookline_shared::queue::{Publisher, QueueError};
use hookline_shared::verify::Provider;

use crate::support::*;

/// A queue that refuses everything, as when Pub/Sub or the disk is down.
#[derive(Debug)]
struct DownQueue;

#[async_trait]
impl Publisher for DownQueue {
    async fn publish(&self, _: &Envelope) -> Result<String, QueueError> {
        Err(QueueError::unavailable(std::io::Error::other(
            "connection refused",
        )))
    }
    async fn ready(&self) -> Result<(), QueueError> {
        Err(QueueError::unavailable(std::io::Error::other(
            "connection refused",
        )))
    }
}

/// A queue that never confirms.
#[derive(Debug)]
struct HangingQueue;

#[async_trait]
impl Publisher for HangingQueue {
    async fn publish(&self, _: &Envelope) -> Result<String, QueueError> {
        std::future::pending().await
    }
    async fn ready(&self) -> Result<(), QueueError> {
        Ok(())
    }
}

fn slack_headers(secret: &str, body: &[u8], ts: chrono::DateTime<Utc>) -> Vec<(String, String)> {
    let mut h = Provider::Slack {
        tolerance_secs: 300,
    }
    .sign(secret, body, ts, "", "");
    h.push(("Content-Type".into(), "application/json".into()));
    h
}

#[tokio::test]
async fn refusals_have_their_status_and_code_and_enqueue_nothing() {
    let mut env = TestEnv::new();
    env.settings.server.max_body_bytes = 4096;
    let queue = env.queue();
    let ingest = spawn_ingest(&env, Arc::new(queue.clone())).await;
    let body = ISSUES_OPENED.as_bytes();
    let signed = github_headers(GITHUB_SECRET, body, "issues", "d-1");
    let client = reqwest::Client::new();

    // Unknown source: 404 that does not list what is configured.
    let (status, json, _) = post(
        &format!("{}/hooks/nope", ingest.url),
        &signed,
        body.to_vec(),
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (404, Some("unknown_source"))
    );
    assert!(!json.to_string().contains("gh"), "{json}");

    // Wrong method: 405 with Allow.
    let resp = client
        .get(format!("{}/hooks/gh", ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers()["allow"], "POST");

    // Over the limit, declared or chunked: 413.
    let (status, json, _) = post(&format!("{}/hooks/gh", ingest.url), &signed, body.to_vec()).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let stream = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let (status, _, _) = post(&format!("{}/hooks/gh", ingest.url), &signed, stream).await;
    assert_eq!(status, 413, "a chunked body crossing the limit");

    // Unknown path: 404 JSON.
    let resp = client
        .get(format!("{}/nowhere", ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    assert_eq!(env.queue_depth().await, (0, 0));
    ingest.stop().await;
}

#[tokio::test]
async fn any_configured_secret_verifies_during_rotation() {
    let env = TestEnv::new();
    let queue = env.queue();
    let ingest = spawn_ingest(&env, Arc::new(queue.clone())).await;
    let body = br#"{"zen":"Keep it logically awesome."}"#;
    for (secret, delivery) in [("old-secret", "r-old"), (GITHUB_SECRET, "r-new")] {
        let headers = github_headers(secret, body, "ping", delivery);
        let (status, json, _) =
            post(&format!("{}/hooks/gh", ingest.url), &headers, body.to_vec()).await;
        assert_eq!(
            (status, json["delivery_id"].as_str()),
            (200, Some(delivery))
        );
    }
    assert_eq!(env.queue_depth().await, (2, 0));
    ingest.stop().await;
}

#[tokio::test]
async fn queue_down_or_silent_means_503_with_retry_after() {
    let mut env = TestEnv::new();
    env.settings.server.publish_timeout_ms = 200;
    let body = ISSUES_OPENED.as_bytes();
    let headers = github_headers(GITHUB_SECRET, body, "issues", "d-503");
    for publisher in [
        Arc::new(DownQueue) as Arc<dyn Publisher>,
        Arc::new(HangingQueue),
    ] {
        let ingest = spawn_ingest(&env, publisher).await;
        let started = std::time::Instant::now();
        let (status, json, resp_headers) =
            post(&format!("{}/hooks/gh", ingest.url), &headers, body.to_vec()).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (503, Some("queue_unavailable"))
        );
        assert_eq!(resp_headers["retry-after"], "5");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a publish must not hang a request"
        );
        ingest.stop().await;
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let env = TestEnv::new();
    let client = reqwest::Client::new();
    let up = spawn_ingest(&env, Arc::new(env.queue())).await;
    assert_eq!(
        client
            .get(format!("{}/healthz", up.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{}/readyz", up.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    up.stop().await;
    let down = spawn_ingest(&env, Arc::new(DownQueue)).await;
    assert_eq!(
        client
            .get(format!("{}/healthz", down.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{}/readyz", down.url))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    down.stop().await;
}

#[tokio::test]
async fn slack_challenge_is_echoed_only_when_signed_and_never_enqueued() {
    let env = TestEnv::new();
    let ingest = spawn_ingest(&env, Arc::new(env.queue())).await;
    let url = format!("{}/hooks/slack-events", ingest.url);
    let body = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;

    let (status, json, _) = post(
        &url,
        &slack_headers(SLACK_SECRET, body, Utc::now()),
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        json,
        serde_json::json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
    );

    let (status, json, _) = post(
        &url,
        &slack_headers("wrong", body, Utc::now()),
        body.to_vec(),
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (401, Some("bad_signature"))
    );

    let stale = Utc::now() - chrono::Duration::seconds(301);
    let (status, json, _) = post(
        &url,
        &slack_headers(SLACK_SECRET, body, stale),
        body.to_vec(),
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (401, Some("timestamp_out_of_window"))
    );
    // Well past the window: the server reads its clock later, and a second boundary in
    // between must not bring a 301 s lead back to 300.
    let future = Utc::now() + chrono::Duration::seconds(310);
    let (status, _, _) = post(
        &url,
        &slack_headers(SLACK_SECRET, body, future),
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 401);

    assert_eq!(
        env.queue_depth().await,
        (0, 0),
        "challenges are answered, not enqueued"
    );

    // A real event is enqueued under Slack's event_id.
    let event = br#"{"type":"event_callback","event_id":"Ev0PV52K21","event":{"type":"app_mention","text":"hi"}}"#;
    let (status, json, _) = post(
        &url,
        &slack_headers(SLACK_SECRET, event, Utc::now()),
        event.to_vec(),
    )
    .await;
    assert_eq!(
        (status, json["delivery_id"].as_str()),
        (200, Some("Ev0PV52K21"))
    );
    assert_eq!(env.queue_depth().await, (1, 0));
    ingest.stop().await;
}

#[tokio::test]
async fn a_slow_sender_gets_408_and_enqueues_nothing() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut env = TestEnv::new();
    env.settings.server.body_read_timeout_ms = 300;
    let ingest = spawn_ingest(&env, Arc::new(env.queue())).await;
    let addr = ingest.url.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Promise 100 bytes, send 10, then stall.
    conn.write_all(
        format!("POST /hooks/gh HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100\r\nX-Hub-Signature-256: sha256=00\r\n\r\n0123456789").as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut answer))
        .await
        .expect("the server must answer a stalled body, not wait forever")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert_eq!(env.queue_depth().await, (0, 0));
    ingest.stop().await;
}

#[tokio::test]
async fn beyond_the_concurrency_cap_requests_get_503_not_a_backlog() {
    let mut env = TestEnv::new();
    env.settings.server.max_concurrent_requests = 1;
    env.settings.server.publish_timeout_ms = 1_500;
    let ingest = spawn_ingest(&env, Arc::new(HangingQueue)).await;
    let url = format!("{}/hooks/gh", ingest.url);
    let body = ISSUES_OPENED.as_bytes().to_vec();
    let headers = github_headers(GITHUB_SECRET, &body, "issues", "cap-1");
    // The first request holds the only permit while its publish hangs...
    let first = tokio::spawn({
        let (url, headers, body) = (url.clone(), headers.clone(), body.clone());
        async move { post(&url, &headers, body).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...so the second is refused at once.
    let started = std::time::Instant::now();
    let (status, json, resp_headers) = post(&url, &headers, body).await;
    assert_eq!((status, json["error"].as_str()), (503, Some("overloaded")));
    assert_eq!(resp_headers["retry-after"], "5");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(
        first.await.unwrap().0,
        503,
        "the first one times out on the queue"
    );
    ingest.stop().await;
}

#[tokio::test]
async fn metrics_can_be_turned_off_on_a_public_ingest() {
    let mut env = TestEnv::new();
    let client = reqwest::Client::new();
    let on = spawn_ingest(&env, Arc::new(env.queue())).await;
    let text = client
        .get(format!("{}/metrics", on.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("# TYPE hookline_ingest_requests_total counter"),
        "{text}"
    );
    on.stop().await;
    env.settings.server.metrics = false;
    let off = spawn_ingest(&env, Arc::new(env.queue())).await;
    assert_eq!(
        client
            .get(format!("{}/metrics", off.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    off.stop().await;
}
