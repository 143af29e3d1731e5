//! Operator replay on Pub/Sub: a dead-lettered delivery goes back to the main topic with its
//! replay counter, and the operators' subscription is left empty.

use std::time::Duration;

use hookline::replay::{Filter, Options};

use crate::support::*;

#[tokio::test]
async fn dead_letters_replay_back_to_the_main_topic() {
    let env = GcpEnv::new("");
    env.provision();
    let (url, ingest) = spawn_ingest(&env).await;
    let worker = spawn_worker(&env, None).await;
    let body = br#"{"action":"opened","issue":{"title":"no link, no author"}}"#.to_vec();
    let (status, _, _) = post(
        &format!("{url}/hooks/gh"),
        &github_headers(&body, "issues", "replay-me"),
        body.clone(),
    )
    .await;
    assert_eq!(status, 200);
    // Wait until the worker has dead-lettered it (its archive object appears first).
    assert!(
        wait_for(Duration::from_secs(30), async || env.objects().await.len()
            == 1)
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.stop().await;

    let tap = format!("tap-{}", env.suffix);
    env.tap(&tap, &env.settings.queue.pubsub.topic).await;
    let dead_letters = hookline::engines::open_dead_letters(&env.settings)
        .await
        .unwrap();
    let main = hookline::engines::open_publisher(&env.settings)
        .await
        .unwrap();
    let options = Options {
        filter: Filter {
            reason: Some("slack".into()),
            ..Filter::default()
        },
        limit: None,
        dry_run: false,
        idle: Duration::from_secs(3),
    };
    let report = hookline::replay::run(dead_letters.as_ref(), main.as_ref(), &options)
        .await
        .unwrap();
    assert_eq!(report.replayed, 1, "{report}");

    let raw = env.pull_raw(&tap, 10).await;
    assert_eq!(raw.len(), 1);
    let (data, attributes) = &raw[0];
    assert_eq!(data, &body);
    assert_eq!(attributes["delivery_id"], "replay-me");
    assert_eq!(attributes["replay_count"], "1");
    assert!(!attributes.contains_key("dead_letter_reason"));
    let left = env
        .pull_raw(&env.settings.queue.pubsub.dead_letter_subscription, 10)
        .await;
    assert!(
        left.is_empty(),
        "the replayed dead letter was acknowledged: {left:?}"
    );
    ingest.stop().await.unwrap();
}
