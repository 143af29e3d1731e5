//! Replay from the archive on the embedded engines: after a Slack rule is added, processed
//! `issues` deliveries are published again and only the new effect happens; replaying
//! twice adds nothing; dry run, limit, time range and an unreadable body behave.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hookline::replay::Report;
use hookline::replay_archive::{ArchiveOptions, run};
use hookline_shared::config::NotifyRule;
use hookline_shared::queue::Subscriber as _;
use hookline_worker::pipeline::{archive_from_settings, warehouse_from_settings};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

async fn replay(env: &TestEnv, options: &ArchiveOptions) -> Report {
    let warehouse = warehouse_from_settings(&env.settings).await.unwrap();
    let archive = archive_from_settings(&env.settings).await.unwrap();
    let queue = env.queue();
    run(warehouse.as_ref(), archive.as_ref(), &queue, options)
        .await
        .unwrap()
}

#[tokio::test]
async fn replay_from_the_archive_runs_only_what_was_never_done() {
    let mut env = TestEnv::new();
    let started = Utc::now() - chrono::Duration::seconds(1);
    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&slack)
        .await;
    let slack_url = Some(format!("{}/hook", slack.uri()));
    let queue = env.queue();
    let ingest = spawn_ingest(&env, Arc::new(queue.clone())).await;
    let worker = spawn_worker(&env, &queue, slack_url.clone()).await;
    let opened = ISSUES_OPENED.as_bytes();
    let closed = ISSUES_OPENED.replacen(r#""action": "opened""#, r#""action": "closed""#, 1);
    assert_ne!(closed, ISSUES_OPENED, "the fixture's action is rewritten");
    for (delivery, event, body) in [
        ("ar-1", "issues", opened),
        ("ar-2", "issues", closed.as_bytes()),
        ("ar-3", "push", opened),
    ] {
        let headers = github_headers(GITHUB_SECRET, body, event, delivery);
        let url = format!("{}/hooks/gh", ingest.url);
        assert_eq!(post(&url, &headers, body.to_vec()).await.0, 200);
    }
    assert!(wait_for(Duration::from_secs(20), async || env.row_count() == 3).await);
    assert!(
        wait_for(Duration::from_secs(5), async || env.queue_depth().await
            == (0, 0))
        .await
    );
    assert_eq!(
        slack.received_requests().await.unwrap().len(),
        1,
        "opened only"
    );
    worker.stop().await;

    // The operator adds a rule: closed issues notify too. New deliveries would post; the
    // processed ones are re-driven from the archive.
    env.settings.slack.notify.push(NotifyRule {
        provider: Some("github".into()),
        source: None,
        event: "issues".into(),
        actions: vec!["closed".into()],
    });
    let options = ArchiveOptions {
        source: "gh".into(),
        event_type: None,
        since: started,
        until: Utc::now() + chrono::Duration::seconds(1),
        limit: None,
        dry_run: true,
        page: 1, // every row is its own page: the keyset paging is exercised
    };
    let listed = replay(&env, &options).await;
    assert_eq!(listed.would_replay, 3, "{listed}");
    assert_eq!(
        env.queue_depth().await,
        (0, 0),
        "a dry run publishes nothing"
    );

    let issues_only = ArchiveOptions {
        event_type: Some("issues".into()),
        dry_run: false,
        ..options.clone()
    };
    let report = replay(&env, &issues_only).await;
    assert_eq!((report.replayed, report.failed), (2, 0), "{report}");
    let republished = queue
        .subscriber()
        .pull(10, Duration::from_secs(2))
        .await
        .unwrap();
    let mut attrs: Vec<_> = republished
        .iter()
        .map(|d| {
            (
                d.attributes["delivery_id"].clone(),
                d.attributes["replay_count"].clone(),
                d.attributes["replayed_from"].clone(),
                d.attributes["event_type"].clone(),
            )
        })
        .collect();
    attrs.sort();
    assert_eq!(
        attrs,
        [
            ("ar-1".into(), "1".into(), "archive".into(), "issues".into()),
            ("ar-2".into(), "1".into(), "archive".into(), "issues".into()),
        ]
    );
    for d in republished {
        assert_eq!(
            &d.body[..],
            if d.attributes["delivery_id"] == "ar-1" {
                opened
            } else {
                closed.as_bytes()
            }
        );
        d.acker.nack().await.unwrap();
    }

    let worker = spawn_worker(&env, &queue, slack_url.clone()).await;
    assert!(
        wait_for(Duration::from_secs(20), async || slack
            .received_requests()
            .await
            .unwrap()
            .len()
            == 2)
        .await,
        "the closed issue is posted now"
    );
    assert!(
        wait_for(Duration::from_secs(10), async || env.queue_depth().await
            == (0, 0))
        .await
    );
    // Replaying again changes nothing: every step is in the ledger.
    assert_eq!(replay(&env, &issues_only).await.replayed, 2);
    assert!(
        wait_for(Duration::from_secs(10), async || env.queue_depth().await
            == (0, 0))
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(slack.received_requests().await.unwrap().len(), 2);
    assert_eq!(env.row_count(), 3);
    assert_eq!(env.archived().len(), 3);
    worker.stop().await;

    // Limit, an empty time range, and a body missing from the archive.
    let limited = ArchiveOptions {
        limit: Some(1),
        ..issues_only.clone()
    };
    assert_eq!(replay(&env, &limited).await.replayed, 1);
    let later = ArchiveOptions {
        since: Utc::now(),
        until: Utc::now() + chrono::Duration::hours(1),
        ..issues_only.clone()
    };
    assert_eq!(replay(&env, &later).await, Report::default());
    let (name, _) = env
        .archived()
        .into_iter()
        .find(|(n, _)| n.ends_with("_ar-1"))
        .unwrap();
    std::fs::remove_file(env.archive_root().join(name)).unwrap();
    let report = replay(&env, &issues_only).await;
    assert_eq!((report.replayed, report.failed), (1, 1), "{report}");
    ingest.stop().await;
}

#[test]
fn the_command_checks_its_arguments_before_touching_anything() {
    let env = TestEnv::new();
    let replay = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookline"))
            .args(["--config", env.config_path().to_str().unwrap(), "replay"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = replay(&["--from", "archive", "--source", "gh"]);
    assert!(!ok && err.contains("needs --source and --since"), "{err}");
    let since = "2026-01-01T00:00:00Z";
    let (ok, _, err) = replay(&["--from", "archive", "--source", "nope", "--since", since]);
    assert!(!ok && err.contains("no source named \"nope\""), "{err}");
    let (ok, _, err) = replay(&[
        "--from", "archive", "--source", "gh", "--since", since, "--reason", "x",
    ]);
    assert!(
        !ok && err.contains("--reason filters dead letters"),
        "{err}"
    );
    let (ok, out, err) = replay(&[
        "--from",
        "archive",
        "--source",
        "gh",
        "--since",
        since,
        "--dry-run",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "replayed=0 would_replay=0 skipped=0 undecodable=0 failed=0"
    );
}
