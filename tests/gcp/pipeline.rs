//! The whole path on the Google Cloud engines: signed POST → Pub/Sub → worker → object in
//! Cloud Storage, row in BigQuery, one Slack request; the message as Pub/Sub holds it; the
//! claim check for bodies over the message limit; permanent failures dead-lettered.

use std::time::Duration;

use wiremock::matchers::{body_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

#[path = "../fixtures/slack.rs"]
mod slack_fixture;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn signed_issue_flows_through_pubsub_to_storage_bigquery_and_slack() {
    let env = GcpEnv::new("");
    env.provision();
    let tap = format!("tap-{}", env.suffix);
    env.tap(&tap, &env.settings.queue.pubsub.topic).await;
    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/T1/B1/X1"))
        .and(body_json(slack_fixture::expected_slack_json()))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .expect(1)
        .mount(&slack)
        .await;
    let (url, ingest) = spawn_ingest(&env).await;
    let worker = spawn_worker(&env, Some(format!("{}/services/T1/B1/X1", slack.uri()))).await;

    let body = ISSUES_OPENED.as_bytes().to_vec();
    let delivery = "5f1d6c2e-4a9e-11ef-9c1e-2a5b3c4d5e6f";
    let (status, json, _) = post(
        &format!("{url}/hooks/gh"),
        &github_headers(&body, "issues", delivery),
        body.clone(),
    )
    .await;
    assert_eq!(status, 200, "{json}");

    // The message as Pub/Sub holds it: the body byte for byte, the documented attributes.
    let raw = env.pull_raw(&tap, 10).await;
    assert_eq!(raw.len(), 1);
    let (data, attributes) = &raw[0];
    assert_eq!(data, &body, "data is the raw request body");
    let attr = |k: &str| {
        attributes
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(attr("source"), "gh");
    assert_eq!(attr("provider"), "github");
    assert_eq!(attr("event_type"), "issues");
    assert_eq!(attr("delivery_id"), delivery);
    assert_eq!(attr("content_type"), "application/json");
    assert!(chrono::DateTime::parse_from_rfc3339(&attr("received_at")).is_ok());
    assert!(!attr("request_id").is_empty());

    assert!(
        wait_for(WAIT, async || env
            .query("SELECT count(*) FROM {ds}.events")
            .await[0][0]
            .as_deref()
            == Some("1"))
        .await,
        "no BigQuery row"
    );
    let objects = env.objects().await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert!(objects[0].0.starts_with("gh/") && objects[0].0.ends_with(&format!("_{delivery}")));
    assert_eq!(objects[0].1, body.len() as u64);
    let rows = env
        .query("SELECT id, source, event_type, payload_encoding, archive_object, JSON_VALUE(payload, '$.issue.title') FROM {ds}.events")
        .await;
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        rows,
        vec![vec![
            s(delivery),
            s("gh"),
            s("issues"),
            s("utf8"),
            s(&objects[0].0),
            s("Webhook deliveries time out when the payload is larger than 1 MB")
        ]]
    );
    // Give a duplicate Slack post a moment to show up before verifying exactly one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.stop().await;
    ingest.stop().await.unwrap();
    slack.verify().await;
}

#[tokio::test]
async fn bodies_over_the_message_limit_travel_as_a_claim_check() {
    let env = GcpEnv::new("");
    env.provision();
    let tap = format!("tap-{}", env.suffix);
    env.tap(&tap, &env.settings.queue.pubsub.topic).await;
    let (url, ingest) = spawn_ingest(&env).await;
    let worker = spawn_worker(&env, None).await;

    // 10.5 MB of valid JSON: over Pub/Sub's 10 MB message limit.
    let padding = "x".repeat(10_500_000);
    let body = format!(r#"{{"ref":"refs/heads/main","padding":"{padding}"}}"#).into_bytes();
    let (status, json, _) = post(
        &format!("{url}/hooks/gh"),
        &github_headers(&body, "push", "big-1"),
        body.clone(),
    )
    .await;
    assert_eq!(status, 200, "{json}");

    let raw = env.pull_raw(&tap, 10).await;
    assert_eq!(raw.len(), 1);
    let (data, attributes) = &raw[0];
    assert!(
        data.is_empty(),
        "the message carries a pointer, not the body"
    );
    let pointer = attributes["claim_check"].as_str().unwrap().to_owned();

    assert!(
        wait_for(WAIT, async || env
            .query("SELECT count(*) FROM {ds}.events")
            .await[0][0]
            .as_deref()
            == Some("1"))
        .await,
        "no BigQuery row"
    );
    let objects = env.objects().await;
    assert_eq!(
        objects,
        vec![(pointer.clone(), body.len() as u64)],
        "one object: the claim check is the archive"
    );
    let rows = env
        .query("SELECT id, payload_encoding, payload, archive_object FROM {ds}.events")
        .await;
    assert_eq!(
        rows,
        vec![vec![
            Some("big-1".into()),
            Some("omitted".into()),
            None,
            Some(pointer)
        ]],
        "the row points at the archive instead of carrying 10.5 MB"
    );
    worker.stop().await;
    ingest.stop().await.unwrap();
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_with_its_reason() {
    let env = GcpEnv::new("");
    env.provision();
    let (url, ingest) = spawn_ingest(&env).await;
    let worker = spawn_worker(&env, None).await;

    // An `issues` `opened` event without the fields the Slack message needs.
    let body = br#"{"action":"opened","issue":{"title":"no link, no author"}}"#.to_vec();
    let (status, _, _) = post(
        &format!("{url}/hooks/gh"),
        &github_headers(&body, "issues", "poison-1"),
        body.clone(),
    )
    .await;
    assert_eq!(status, 200);

    let dead_ops = env.settings.queue.pubsub.dead_letter_subscription.clone();
    let mut dead = Vec::new();
    assert!(
        wait_for(WAIT, async || {
            dead.extend(env.pull_raw(&dead_ops, 10).await);
            !dead.is_empty()
        })
        .await,
        "nothing reached the dead-letter topic"
    );
    let (data, attributes) = &dead[0];
    assert_eq!(data, &body);
    assert_eq!(attributes["delivery_id"], "poison-1");
    assert_eq!(attributes["dead_letter_sink"], "slack");
    assert!(
        attributes["dead_letter_reason"]
            .as_str()
            .unwrap()
            .contains("lacks")
    );
    assert_eq!(attributes["dead_letter_attempts"], "1");
    // The sinks before Slack did their part; the operator replays after fixing the cause.
    assert_eq!(env.objects().await.len(), 1);
    worker.stop().await;
    ingest.stop().await.unwrap();
}

#[tokio::test]
async fn a_provider_resend_has_no_second_effect_on_the_cloud_ledger() {
    let env = GcpEnv::new("");
    env.provision();
    let (url, ingest) = spawn_ingest(&env).await;
    let worker = spawn_worker(&env, None).await;
    let body = br#"{"ref":"refs/heads/main","after":"abc123"}"#.to_vec();
    for _ in 0..2 {
        let (status, _, _) = post(
            &format!("{url}/hooks/gh"),
            &github_headers(&body, "push", "resent-gcp"),
            body.clone(),
        )
        .await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(
        wait_for(WAIT, async || env
            .query("SELECT count(*) FROM {ds}.events")
            .await[0][0]
            .as_deref()
            == Some("1"))
        .await,
        "the first copy's row"
    );
    // Give the second copy time to be processed (and, wrongly, to add a row or object).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.query("SELECT count(*) FROM {ds}.events").await[0][0].as_deref(),
        Some("1")
    );
    assert_eq!(env.objects().await.len(), 1);
    worker.stop().await;
    ingest.stop().await.unwrap();
}

/// Ingest's publish lanes take every waiting message into one request: under concurrent
/// webhooks each answer must still carry the id of *its own* message, every message must
/// arrive once, and nothing may be mixed up between callers.
#[tokio::test]
async fn concurrent_webhooks_batched_by_the_lanes_each_get_their_own_message() {
    let env = GcpEnv::new("publish_lanes = 1");
    env.provision();
    let tap = format!("tap-{}", env.suffix);
    env.tap(&tap, &env.settings.queue.pubsub.topic).await;
    let (url, ingest) = spawn_ingest(&env).await;

    const N: usize = 120;
    let sends = (0..N).map(|i| {
        let url = url.clone();
        async move {
            let delivery = format!("lane-{i}");
            let body = format!(r#"{{"ref":"refs/heads/main","n":{i}}}"#).into_bytes();
            let (status, json, _) = post(
                &format!("{url}/hooks/gh"),
                &github_headers(&body, "push", &delivery),
                body,
            )
            .await;
            assert_eq!(status, 200, "{json}");
            (delivery, json["message_id"].as_str().unwrap().to_owned())
        }
    });
    let answered: std::collections::BTreeMap<String, String> =
        futures_util::future::join_all(sends)
            .await
            .into_iter()
            .collect();
    assert_eq!(answered.len(), N);
    let distinct: std::collections::BTreeSet<_> = answered.values().collect();
    assert_eq!(distinct.len(), N, "every webhook got its own message id");

    // What Pub/Sub holds: each message id carries the delivery that was told that id.
    let client = reqwest::Client::new();
    let mut held = std::collections::BTreeMap::new();
    for _ in 0..30 {
        if held.len() == N {
            break;
        }
        let resp: serde_json::Value = client
            .post(env.pubsub_url(&format!("subscriptions/{tap}:pull")))
            .json(&serde_json::json!({ "maxMessages": 100, "returnImmediately": true }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let received = resp["receivedMessages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for m in &received {
            let id = m["message"]["messageId"].as_str().unwrap().to_owned();
            let delivery = m["message"]["attributes"]["delivery_id"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(
                held.insert(id, delivery).is_none(),
                "a message arrived twice"
            );
        }
        let ack_ids: Vec<_> = received.iter().map(|m| m["ackId"].clone()).collect();
        if !ack_ids.is_empty() {
            client
                .post(env.pubsub_url(&format!("subscriptions/{tap}:acknowledge")))
                .json(&serde_json::json!({ "ackIds": ack_ids }))
                .send()
                .await
                .unwrap();
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(held.len(), N, "every message arrived");
    for (delivery, id) in &answered {
        assert_eq!(
            held.get(id),
            Some(delivery),
            "message {id} is not {delivery}'s"
        );
    }
    ingest.stop().await.unwrap();
}
