//! The subscription's own dead-letter policy, on the emulator: every nack brings the
//! message back with a higher delivery attempt, and after the maximum it is on the
//! dead-letter topic.

use std::sync::Arc;
use std::time::Duration;

use hookline_shared::envelope::{Envelope, Metadata, now_millis};
use hookline_shared::queue::{Publisher, Subscriber};

use crate::support::*;

fn ping(delivery_id: &str) -> Envelope {
    Envelope {
        body: bytes::Bytes::from_static(b"{\"zen\":\"Design for failure.\"}"),
        meta: Metadata {
            source: "gh".into(),
            provider: "github".into(),
            event_type: Some("ping".into()),
            delivery_id: delivery_id.into(),
            received_at: now_millis(),
            content_type: Some("application/json".into()),
            request_id: "r-1".into(),
            replay_count: 0,
            extra: Default::default(),
        },
    }
}

/// A provisioned emulator project with `pubsub_extra` in its Pub/Sub settings, and the
/// engine's own publisher and subscriber on it.
async fn queue(pubsub_extra: &str) -> (GcpEnv, Arc<dyn Publisher>, Arc<dyn Subscriber>) {
    open(GcpEnv::new(pubsub_extra)).await
}

/// `env` provisioned, and the engine's own publisher and subscriber on it.
async fn open(env: GcpEnv) -> (GcpEnv, Arc<dyn Publisher>, Arc<dyn Subscriber>) {
    env.provision();
    let publisher = hookline::engines::open_publisher(&env.settings)
        .await
        .unwrap();
    let subscriber = hookline::engines::open_subscriber(&env.settings)
        .await
        .unwrap();
    (env, publisher, subscriber)
}

#[tokio::test]
async fn without_a_retry_policy_the_worker_holds_a_nack_for_the_backoff() {
    let (env, publisher, subscriber) = queue("min_backoff_secs = 1\nmax_backoff_secs = 2").await;
    assert!(!env.settings.queue.pubsub.retry_policy);
    publisher.publish(&ping("hold-me")).await.unwrap();
    // Attempt 1 is held 1 s, attempt 2 for 2 s (doubling, capped at the maximum).
    for (attempt, hold) in [(1, 1.0), (2, 2.0)] {
        let delivery = subscriber
            .pull(1, Duration::from_secs(10))
            .await
            .unwrap()
            .pop()
            .expect("the message comes back");
        assert_eq!(delivery.attempt, attempt);
        let started = std::time::Instant::now();
        delivery.acker.nack().await.unwrap();
        let held = started.elapsed().as_secs_f64();
        assert!(held >= hold * 0.95, "attempt {attempt} held {held:.2} s");
    }
    let third = subscriber.pull(1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(third.first().map(|d| d.attempt), Some(3));
    for d in third {
        d.acker.ack().await.unwrap();
    }
}

#[tokio::test]
async fn nacks_redeliver_with_increasing_attempts_then_dead_letter() {
    let (env, publisher, subscriber) = queue("max_delivery_attempts = 5").await;
    let envelope = ping("nack-me");
    publisher.publish(&envelope).await.unwrap();

    let mut attempts = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while attempts.len() < 5 && tokio::time::Instant::now() < deadline {
        for delivery in subscriber.pull(1, Duration::from_secs(5)).await.unwrap() {
            assert_eq!(delivery.envelope().unwrap(), envelope);
            attempts.push(delivery.attempt);
            delivery.acker.nack().await.unwrap();
        }
    }
    assert_eq!(attempts, [1, 2, 3, 4, 5]);
    assert!(
        subscriber
            .pull(1, Duration::from_secs(3))
            .await
            .unwrap()
            .is_empty(),
        "after the fifth attempt the subscription no longer delivers it"
    );

    let dead_ops = env.settings.queue.pubsub.dead_letter_subscription.clone();
    let mut dead = Vec::new();
    assert!(
        wait_for(Duration::from_secs(30), async || {
            dead.extend(env.pull_raw(&dead_ops, 10).await);
            !dead.is_empty()
        })
        .await,
        "the message never reached the dead-letter topic"
    );
    let (data, attributes) = &dead[0];
    assert_eq!(data, &envelope.body.to_vec());
    assert_eq!(attributes["delivery_id"], "nack-me");
    assert!(
        attributes
            .keys()
            .any(|k| k.starts_with("CloudPubSubDeadLetterSource")),
        "Pub/Sub marks forwarded messages: {attributes:?}"
    );
    subscriber.close().await;
}

/// The emulator ignores streaming pull's flow control and sends a whole backlog at once. The
/// subscription must lease every message it is sent, not only those the worker has taken:
/// a message left unread runs out its deadline and comes back, one attempt closer to the
/// dead-letter topic, though nobody failed it. Real Pub/Sub sends no more than the flow
/// control allows, so there this holds nothing extra.
#[tokio::test]
async fn a_backlog_beyond_the_flow_control_is_leased_not_redelivered() {
    const BACKLOG: usize = 40;
    let mut env = GcpEnv::new("ack_deadline_secs = 10");
    env.settings.worker.concurrency = 4;
    let (_env, publisher, subscriber) = open(env).await;
    // One at a time, so that they arrive on the stream one response each (a response read
    // at all is leased whole).
    for i in 0..BACKLOG {
        publisher
            .publish(&ping(&format!("backlog-{i}")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The worker is busy for two ack deadlines and takes nothing meanwhile.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let mut seen = Vec::new();
    loop {
        let batch = subscriber
            .pull(BACKLOG, Duration::from_secs(3))
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        for delivery in batch {
            seen.push((
                delivery.envelope().unwrap().meta.delivery_id,
                delivery.attempt,
            ));
            delivery.acker.ack().await.unwrap();
        }
    }
    seen.sort();
    let mut expected: Vec<_> = (0..BACKLOG).map(|i| (format!("backlog-{i}"), 1)).collect();
    expected.sort();
    assert_eq!(seen, expected, "each message once, on its first attempt");
    subscriber.close().await;
}
