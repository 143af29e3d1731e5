//! The SQLite analytics views over real-shaped GitHub issue events.

use hookline_shared::sink::Warehouse as _;
use hookline_worker::sinks::warehouse_sqlite::SqliteWarehouse;

#[path = "../fixtures/github_issues.rs"]
mod github_issues;

#[tokio::test]
async fn issue_lifecycle_view_computes_time_to_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sqlite3");
    let warehouse = SqliteWarehouse::open(&path).unwrap();
    for event in github_issues::events("gh") {
        warehouse.insert(&event, "gh/obj").await.unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let rows: Vec<Vec<Option<String>>> = conn
        .prepare("SELECT repository, issue_number, opened_at, closed_at, seconds_to_close FROM github_issue_lifecycle")
        .unwrap()
        .query_map([], |r| {
            (0..5)
                .map(|i| {
                    r.get::<_, rusqlite::types::Value>(i).map(|v| match v {
                        rusqlite::types::Value::Null => None,
                        rusqlite::types::Value::Integer(n) => Some(n.to_string()),
                        rusqlite::types::Value::Text(t) => Some(t),
                        other => Some(format!("{other:?}")),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    github_issues::assert_lifecycle(rows);

    let common: Vec<(String, i64)> = conn
        .prepare("SELECT action, issue_number FROM events_common WHERE repository = 'octo-org/other' ORDER BY action")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        common,
        [("closed".to_string(), 1), ("opened".to_string(), 1)]
    );
}
