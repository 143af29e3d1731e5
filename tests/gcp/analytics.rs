//! The BigQuery analytics views over the same GitHub issue events as the SQLite test.

use hookline_shared::sink::Warehouse as _;
use hookline_worker::sinks::warehouse_bigquery::BigQueryWarehouse;

use crate::support::*;

#[path = "../fixtures/github_issues.rs"]
mod github_issues;

#[tokio::test]
async fn issue_lifecycle_view_computes_time_to_close() {
    let env = GcpEnv::new("");
    env.provision();
    let warehouse = BigQueryWarehouse::connect(PROJECT, &env.settings.warehouse.bigquery)
        .await
        .unwrap();
    for event in github_issues::events("gh") {
        warehouse.insert(&event, "gh/obj").await.unwrap();
    }
    let rows = env
        .query("SELECT repository, issue_number, opened_at, closed_at, seconds_to_close FROM {ds}.github_issue_lifecycle")
        .await;
    github_issues::assert_lifecycle(rows);

    let mut common = env
        .query("SELECT action, issue_number FROM {ds}.events_common WHERE repository = 'octo-org/other'")
        .await;
    common.sort();
    assert_eq!(
        common,
        vec![
            vec![Some("closed".into()), Some("1".into())],
            vec![Some("opened".into()), Some("1".into())]
        ]
    );
}
