//! Operator replay on the embedded engine: filters, dry run, limit, the replay counter, and
//! that a failed republish leaves the dead letter in place.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hookline::replay::{Filter, Options, Report};
use hookline_shared::envelope::Envelope;
use hookline_shared::queue::embedded::{DEAD_LETTER_TOPIC, MAIN_TOPIC};
use hookline_shared::queue::{DeadLetter, Publisher, QueueError, Subscriber as _};

use crate::support::*;

#[derive(Debug)]
struct DownQueue;

#[async_trait]
impl Publisher for DownQueue {
    async fn publish(&self, _: &Envelope) -> Result<String, QueueError> {
        Err(QueueError::unavailable(std::io::Error::other("down")))
    }
    async fn ready(&self) -> Result<(), QueueError> {
        Ok(())
    }
}

/// Puts three messages on the dead-letter topic: (delivery, event type, failing sink).
async fn dead_letters(env: &TestEnv) {
    let queue = env.queue();
    let ingest = spawn_ingest(env, Arc::new(queue.clone())).await;
    let body = ISSUES_OPENED.as_bytes();
    for (delivery, event) in [("dl-1", "push"), ("dl-2", "issues"), ("dl-3", "push")] {
        let headers = github_headers(GITHUB_SECRET, body, event, delivery);
        assert_eq!(
            post(&format!("{}/hooks/gh", ingest.url), &headers, body.to_vec())
                .await
                .0,
            200
        );
    }
    ingest.stop().await;
    let sub = queue.subscriber();
    let mut n = 0;
    while n < 3 {
        for d in sub.pull(3, Duration::from_secs(3)).await.unwrap() {
            let sink = if d.attributes["delivery_id"] == "dl-2" {
                "slack"
            } else {
                "warehouse"
            };
            let reason = DeadLetter {
                sink: sink.into(),
                reason: format!("{sink} refused it"),
                attempts: 1,
            };
            d.acker.dead_letter(reason).await.unwrap();
            n += 1;
        }
    }
}

fn options(filter: Filter, limit: Option<u64>, dry_run: bool) -> Options {
    Options {
        filter,
        limit,
        dry_run,
        idle: Duration::from_millis(700),
    }
}

#[tokio::test]
async fn replay_moves_selected_dead_letters_back_once() {
    let env = TestEnv::new();
    dead_letters(&env).await;
    let queue = env.queue();
    let depth =
        async |topic| queue.depth(topic).await.unwrap().0 + queue.depth(topic).await.unwrap().1;

    // Dry run: lists, changes nothing.
    let report = hookline::replay::run(
        &queue.dead_letter_subscriber(),
        &queue,
        &options(Filter::default(), None, true),
    )
    .await
    .unwrap();
    assert_eq!(
        report,
        Report {
            would_replay: 3,
            ..Report::default()
        }
    );
    assert!(
        wait_for(Duration::from_secs(5), async || depth(DEAD_LETTER_TOPIC)
            .await
            == 3)
        .await
    );
    assert_eq!(depth(MAIN_TOPIC).await, 0);

    // A filter and a limit: one `push` delivery.
    let push_only = Filter {
        event_type: Some("push".into()),
        ..Filter::default()
    };
    let report = hookline::replay::run(
        &queue.dead_letter_subscriber(),
        &queue,
        &options(push_only, Some(1), false),
    )
    .await
    .unwrap();
    assert_eq!(report.replayed, 1, "{report}");
    assert_eq!(depth(MAIN_TOPIC).await, 1);
    let replayed = queue
        .subscriber()
        .pull(1, Duration::from_secs(3))
        .await
        .unwrap()
        .pop()
        .unwrap();
    let envelope = replayed.envelope().unwrap();
    assert_eq!(envelope.meta.replay_count, 1);
    assert_eq!(envelope.meta.event_type.as_deref(), Some("push"));
    assert!(
        !envelope
            .meta
            .extra
            .keys()
            .any(|k| k.starts_with("dead_letter_")),
        "dead-letter attributes are dropped: {:?}",
        envelope.meta.extra
    );
    assert_eq!(envelope.body, ISSUES_OPENED.as_bytes());
    replayed.acker.ack().await.unwrap();

    // By failure reason: the slack one.
    let slack = Filter {
        reason: Some("slack".into()),
        ..Filter::default()
    };
    let report = hookline::replay::run(
        &queue.dead_letter_subscriber(),
        &queue,
        &options(slack, None, false),
    )
    .await
    .unwrap();
    assert_eq!((report.replayed, report.skipped), (1, 1), "{report}");
    let d = queue
        .subscriber()
        .pull(1, Duration::from_secs(3))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(d.attributes["delivery_id"], "dl-2");
    d.acker.ack().await.unwrap();
    assert!(
        wait_for(Duration::from_secs(5), async || depth(DEAD_LETTER_TOPIC)
            .await
            == 1)
        .await
    );
}

#[tokio::test]
async fn a_failed_republish_leaves_the_dead_letter_in_place() {
    let env = TestEnv::new();
    dead_letters(&env).await;
    let queue = env.queue();
    let report = hookline::replay::run(
        &queue.dead_letter_subscriber(),
        &DownQueue,
        &options(Filter::default(), None, false),
    )
    .await
    .unwrap();
    assert_eq!(report.failed, 3, "{report}");
    assert_eq!(report.replayed, 0);
    let dead = queue.depth(DEAD_LETTER_TOPIC).await.unwrap();
    assert_eq!(dead.0 + dead.1, 3, "nothing lost");
}
