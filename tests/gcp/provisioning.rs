//! `hookline provision` creates every resource once; running it again changes nothing.

use crate::support::*;

#[tokio::test]
async fn provisioning_twice_is_a_no_op() {
    let env = GcpEnv::new("");
    let first = env.provision();
    let s = &env.suffix;
    for resource in [
        format!("projects/{PROJECT}/topics/events-{s}"),
        format!("projects/{PROJECT}/topics/dead-{s}"),
        format!("projects/{PROJECT}/subscriptions/worker-{s}"),
        format!("projects/{PROJECT}/subscriptions/dead-ops-{s}"),
        format!("bucket gs://archive-{s}"),
        format!("dataset {PROJECT}.ds_{s}"),
        format!("table {PROJECT}.ds_{s}.events"),
    ] {
        assert!(
            first.contains(&format!("created  {resource}")),
            "{resource} not created: {first:#?}"
        );
    }
    for view in ["events_common", "github_issue_lifecycle"] {
        let line = format!("replaced view {PROJECT}.ds_{s}.{view}");
        assert!(first.contains(&line), "{line}: {first:#?}");
    }

    let second = env.provision();
    assert_eq!(second.len(), first.len());
    assert!(
        second
            .iter()
            .all(|l| l.starts_with("exists") || l.starts_with("replaced view")),
        "second run must only find what exists: {second:#?}"
    );
}

/// The worker's subscription gets the dead-letter policy, and the retry policy only when
/// `retry_policy` is on (Pub/Sub then redelivers a nack after the backoff, else at once).
#[tokio::test]
async fn the_subscription_has_the_configured_policies() {
    let host = emulator_env()
        .into_iter()
        .find(|(k, _)| k == "PUBSUB_EMULATOR_HOST")
        .map(|(_, v)| v)
        .unwrap();
    let client = reqwest::Client::new();
    for (extra, backoff) in [
        (
            "retry_policy = true\nmin_backoff_secs = 2\nmax_backoff_secs = 7",
            Some(("2s", "7s")),
        ),
        ("", None),
    ] {
        let env = GcpEnv::new(extra);
        env.provision();
        let url = format!(
            "http://{host}/v1/projects/{PROJECT}/subscriptions/worker-{}",
            env.suffix
        );
        let sub: serde_json::Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(
            sub["deadLetterPolicy"]["deadLetterTopic"],
            format!("projects/{PROJECT}/topics/dead-{}", env.suffix),
            "{sub}"
        );
        assert_eq!(sub["deadLetterPolicy"]["maxDeliveryAttempts"], 5, "{sub}");
        match backoff {
            Some((min, max)) => {
                assert_eq!(sub["retryPolicy"]["minimumBackoff"], min, "{sub}");
                assert_eq!(sub["retryPolicy"]["maximumBackoff"], max, "{sub}");
            }
            None => assert!(sub.get("retryPolicy").is_none(), "{sub}"),
        }
    }
}
