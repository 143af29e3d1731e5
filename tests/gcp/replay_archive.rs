//! Replay from the archive on Google Cloud: BigQuery is the index (paged one row at a
//! time here, so the keyset paging runs on the emulator), Cloud Storage holds the bodies,
//! and the deliveries go back to the Pub/Sub topic with their original attributes.

use std::time::Duration;

use chrono::Utc;
use hookline::replay_archive::{ArchiveOptions, run};
use hookline_worker::pipeline::{archive_from_settings, warehouse_from_settings};

use crate::support::*;

#[tokio::test]
async fn processed_deliveries_replay_from_the_archive() {
    let env = GcpEnv::new("");
    env.provision();
    let started = Utc::now() - chrono::Duration::seconds(2);
    let (url, ingest) = spawn_ingest(&env).await;
    let worker = spawn_worker(&env, None).await;
    let bodies = [
        ("gar-1", "issues", br#"{"action":"edited","n":1}"#.to_vec()),
        ("gar-2", "issues", br#"{"action":"edited","n":2}"#.to_vec()),
        ("gar-3", "push", br#"{"ref":"refs/heads/main"}"#.to_vec()),
    ];
    for (delivery, event, body) in &bodies {
        let headers = github_headers(body, event, delivery);
        let (status, _, _) = post(&format!("{url}/hooks/gh"), &headers, body.clone()).await;
        assert_eq!(status, 200);
    }
    let count = async || {
        env.query("SELECT COUNT(*) FROM {ds}.events").await[0][0]
            .clone()
            .unwrap_or_default()
    };
    assert!(
        wait_for(Duration::from_secs(60), async || count().await == "3").await,
        "rows: {}",
        count().await
    );
    worker.stop().await;

    let warehouse = warehouse_from_settings(&env.settings).await.unwrap();
    // The check the worker makes when an earlier attempt may have inserted unrecorded.
    assert!(warehouse.contains("gh", "gar-1", Utc::now()).await.unwrap());
    assert!(!warehouse.contains("gh", "gar-0", Utc::now()).await.unwrap());
    assert!(
        !warehouse
            .contains("gh", "gar-1", Utc::now() - chrono::Duration::days(30))
            .await
            .unwrap(),
        "the receive-time window bounds the partitions read"
    );

    let tap = format!("tap-{}", env.suffix);
    env.tap(&tap, &env.settings.queue.pubsub.topic).await;
    let archive = archive_from_settings(&env.settings).await.unwrap();
    let main = hookline::engines::open_publisher(&env.settings)
        .await
        .unwrap();
    let options = ArchiveOptions {
        source: "gh".into(),
        event_type: Some("issues".into()),
        since: started,
        until: Utc::now() + chrono::Duration::seconds(1),
        limit: None,
        dry_run: false,
        page: 1,
    };
    let report = run(
        warehouse.as_ref(),
        archive.as_ref(),
        main.as_ref(),
        &options,
    )
    .await
    .unwrap();
    assert_eq!((report.replayed, report.failed), (2, 0), "{report}");

    let mut raw = env.pull_raw(&tap, 10).await;
    raw.sort_by(|a, b| {
        a.1["delivery_id"]
            .as_str()
            .cmp(&b.1["delivery_id"].as_str())
    });
    assert_eq!(raw.len(), 2, "{raw:?}");
    for ((data, attributes), (delivery, event, body)) in raw.iter().zip(&bodies) {
        assert_eq!(data, body, "the body byte for byte, from Cloud Storage");
        assert_eq!(attributes["delivery_id"], *delivery);
        assert_eq!(attributes["event_type"], *event);
        assert_eq!(attributes["provider"], "github");
        assert_eq!(attributes["replay_count"], "1");
        assert_eq!(attributes["replayed_from"], "archive");
    }

    let limited = ArchiveOptions {
        limit: Some(1),
        dry_run: true,
        ..options
    };
    let report = run(
        warehouse.as_ref(),
        archive.as_ref(),
        main.as_ref(),
        &limited,
    )
    .await
    .unwrap();
    assert_eq!((report.would_replay, report.replayed), (1, 0), "{report}");
    ingest.stop().await.unwrap();
}
