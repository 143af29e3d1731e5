//! The whole path on the embedded engines: signed POST → 200 → archive object, warehouse
//! row (read back through SQL), exactly one Slack request; and a bad signature reaching
//! nothing at all.

use std::sync::Arc;
use std::time::Duration;

use hookline_shared::queue::Subscriber as _;

use wiremock::matchers::{body_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(15);

/// A fake Slack that gives every post `answer` and expects `posts` of them (checked by
/// `verify`), and `env`'s ingest and worker on one embedded queue, posting to it.
async fn with_slack(
    env: &TestEnv,
    answer: ResponseTemplate,
    posts: u64,
) -> (MockServer, Ingest, Worker) {
    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(answer)
        .expect(posts)
        .mount(&slack)
        .await;
    let queue = env.queue();
    let ingest = spawn_ingest(env, Arc::new(queue.clone())).await;
    let worker = spawn_worker(env, &queue, Some(format!("{}/hook", slack.uri()))).await;
    (slack, ingest, worker)
}

#[tokio::test]
async fn signed_issue_reaches_archive_warehouse_and_slack_once() {
    let env = TestEnv::new();
    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/T000/B000/XXXX"))
        .and(body_json(expected_slack_json()))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .expect(1)
        .mount(&slack)
        .await;
    let queue = env.queue();
    let ingest = spawn_ingest(&env, Arc::new(queue.clone())).await;
    let worker = spawn_worker(
        &env,
        &queue,
        Some(format!("{}/services/T000/B000/XXXX", slack.uri())),
    )
    .await;

    let body = ISSUES_OPENED.as_bytes();
    let delivery = "1b0e4c10-4a9e-11ef-8d5c-0d1b5d2f6a77";
    let headers = github_headers(GITHUB_SECRET, body, "issues", delivery);
    let (status, json, _) =
        post(&format!("{}/hooks/gh", ingest.url), &headers, body.to_vec()).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["delivery_id"], delivery);

    assert!(
        wait_for(WAIT, async || env.row_count() == 1).await,
        "warehouse row never appeared"
    );
    assert!(
        wait_for(WAIT, async || env.queue_depth().await == (0, 0)).await,
        "message was not acknowledged"
    );

    // The archive holds the raw body byte for byte, under source/day/.._{delivery}.
    let archived = env.archived();
    assert_eq!(
        archived.len(),
        1,
        "{:?}",
        archived.iter().map(|a| &a.0).collect::<Vec<_>>()
    );
    let (name, bytes) = &archived[0];
    assert!(
        name.starts_with("gh/") && name.ends_with(&format!("_{delivery}")),
        "{name}"
    );
    assert_eq!(bytes, body);

    // The row, read back through SQL, including the JSON functions users will use.
    let rows = env.warehouse(
        "SELECT id, source, provider, event_type, payload_encoding, archive_object,
                json_extract(payload, '$.issue.number'), json_extract(payload, '$.action')
         FROM events",
    );
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        rows,
        vec![vec![
            s(delivery),
            s("gh"),
            s("github"),
            s("issues"),
            s("utf8"),
            s(name),
            s("1347"),
            s("opened"),
        ]]
    );
    let payload = env.warehouse("SELECT payload FROM events");
    assert_eq!(
        payload[0][0].as_deref(),
        Some(ISSUES_OPENED),
        "payload stored verbatim"
    );
    let lifecycle = env.warehouse(
        "SELECT repository, issue_number, opened_at, closed_at FROM github_issue_lifecycle",
    );
    assert_eq!(
        lifecycle,
        vec![vec![
            s("octo-org/hello-world"),
            s("1347"),
            s("2026-11-20T09:15:27Z"),
            None
        ]]
    );

    worker.stop().await;
    ingest.stop().await;
    slack.verify().await; // exactly one request with exactly that JSON
}

#[tokio::test]
async fn bad_signature_is_refused_and_reaches_nothing() {
    let env = TestEnv::new();
    let (slack, ingest, worker) = with_slack(&env, ResponseTemplate::new(200), 0).await;

    let body = ISSUES_OPENED.as_bytes();
    let url = format!("{}/hooks/gh", ingest.url);
    let wrong_secret = github_headers("not-the-secret", body, "issues", "d-1");
    let (status, json, _) = post(&url, &wrong_secret, body.to_vec()).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (401, Some("bad_signature"))
    );

    let mut tampered = ISSUES_OPENED.to_string().into_bytes();
    let good = github_headers(GITHUB_SECRET, &tampered, "issues", "d-2");
    tampered[20] ^= 1;
    let (status, _, _) = post(&url, &good, tampered).await;
    assert_eq!(status, 401);

    let unsigned: Vec<(String, String)> = vec![("X-GitHub-Event".into(), "issues".into())];
    let (status, json, _) = post(&url, &unsigned, body.to_vec()).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (401, Some("missing_signature"))
    );

    // Give a (wrongly) enqueued message every chance to be processed before looking.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.queue_depth().await, (0, 0), "nothing enqueued");
    assert_eq!(env.row_count(), 0, "no warehouse row");
    assert!(env.archived().is_empty(), "no archive object");
    worker.stop().await;
    ingest.stop().await;
    slack.verify().await;
}

#[tokio::test]
async fn messages_enqueued_while_the_worker_is_down_are_processed_when_it_returns() {
    let env = TestEnv::new();
    let queue = env.queue();
    let ingest = spawn_ingest(&env, Arc::new(queue.clone())).await;
    let url = format!("{}/hooks/gh", ingest.url);

    let worker = spawn_worker(&env, &queue, None).await;
    let body = ISSUES_OPENED.as_bytes();
    let (status, _, _) = post(
        &url,
        &github_headers(GITHUB_SECRET, body, "issues", "before"),
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(wait_for(WAIT, async || env.row_count() == 1).await);
    worker.stop().await;

    for i in 0..5 {
        let headers = github_headers(GITHUB_SECRET, body, "issues", &format!("while-down-{i}"));
        let (status, _, _) = post(&url, &headers, body.to_vec()).await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.row_count(), 1, "no worker, no processing");
    assert_eq!(
        env.queue_depth().await,
        (5, 0),
        "all five wait in the queue"
    );

    // A new worker on a freshly opened queue handle, as after a process restart.
    let reopened = env.queue();
    let worker = spawn_worker(&env, &reopened, None).await;
    assert!(
        wait_for(WAIT, async || env.row_count() == 6).await,
        "rows: {}",
        env.row_count()
    );
    assert!(wait_for(WAIT, async || env.queue_depth().await == (0, 0)).await);
    assert_eq!(env.archived().len(), 6);
    worker.stop().await;
    ingest.stop().await;
}

#[tokio::test]
async fn a_redelivered_message_produces_no_second_row_or_object() {
    let env = TestEnv::new();
    let queue = env.queue();
    let ingest = spawn_ingest(&env, Arc::new(queue.clone())).await;
    let url = format!("{}/hooks/gh", ingest.url);
    let body = ISSUES_OPENED.as_bytes();
    let headers = github_headers(GITHUB_SECRET, body, "push", "same-delivery");
    assert_eq!(post(&url, &headers, body.to_vec()).await.0, 200);

    // Process it by hand, then deliver the same message again as the queue would after a
    // lost ack: nack after success, so the worker sees it a second time.
    let pipeline = hookline_worker::Pipeline::from_settings(&env.settings, None)
        .await
        .unwrap();
    let first = queue
        .subscriber()
        .pull(1, WAIT)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let envelope = first.envelope().unwrap();
    assert_eq!(
        pipeline.handle(&envelope, &first.message_id, 1).await,
        hookline_worker::Disposition::Ack
    );
    first.acker.nack().await.unwrap();
    let again = queue
        .subscriber()
        .pull(1, WAIT)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!((again.attempt, &again.message_id), (2, &first.message_id));
    assert_eq!(
        pipeline
            .handle(&again.envelope().unwrap(), &again.message_id, 2)
            .await,
        hookline_worker::Disposition::Ack
    );
    again.acker.ack().await.unwrap();

    assert_eq!(env.row_count(), 1);
    assert_eq!(env.archived().len(), 1);
    ingest.stop().await;
}

#[tokio::test]
async fn a_provider_resend_of_the_same_delivery_has_no_second_effect() {
    let env = TestEnv::new();
    let ok = ResponseTemplate::new(200).set_body_string("ok");
    let (slack, ingest, worker) = with_slack(&env, ok, 1).await;
    let body = ISSUES_OPENED.as_bytes();
    let url = format!("{}/hooks/gh", ingest.url);
    // GitHub's "Redeliver": the same X-GitHub-Delivery, a new request a while later, so a
    // new receive time (and what would be a new archive name).
    for _ in 0..2 {
        let headers = github_headers(GITHUB_SECRET, body, "issues", "resent-1");
        assert_eq!(post(&url, &headers, body.to_vec()).await.0, 200);
        assert!(wait_for(WAIT, async || env.queue_depth().await == (0, 0)).await);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(env.archived().len(), 1, "one archive object");
    assert_eq!(env.row_count(), 1, "one warehouse row");
    worker.stop().await;
    ingest.stop().await;
    slack.verify().await; // one Slack post
}

/// A sink slower than the queue's ack deadline: the worker keeps extending its lease, so
/// the message is never delivered to a second worker beside the first, and Slack is posted
/// once. (With a fixed 10 s cadence the 1 s lease ran out, the second copy found Slack's
/// intent recorded and posted again.)
#[tokio::test]
async fn a_sink_slower_than_the_ack_deadline_keeps_its_lease() {
    let mut env = TestEnv::new();
    env.settings.queue.embedded.ack_deadline_secs = 1;
    let slow = ResponseTemplate::new(200)
        .set_body_string("ok")
        .set_delay(Duration::from_secs(3));
    let (slack, ingest, worker) = with_slack(&env, slow, 1).await;

    let body = ISSUES_OPENED.as_bytes();
    let headers = github_headers(GITHUB_SECRET, body, "issues", "slow-slack-1");
    let (status, json, _) =
        post(&format!("{}/hooks/gh", ingest.url), &headers, body.to_vec()).await;
    assert_eq!(status, 200, "{json}");
    assert!(
        wait_for(WAIT, async || env.queue_depth().await == (0, 0)).await,
        "message was not acknowledged"
    );
    // A second copy started at the first lease's end would still be waiting on Slack.
    tokio::time::sleep(Duration::from_secs(4)).await;

    worker.stop().await;
    ingest.stop().await;
    slack.verify().await;
}
