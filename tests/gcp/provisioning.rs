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
