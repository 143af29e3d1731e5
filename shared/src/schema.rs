//! The warehouse table, defined once in `infra/bigquery/events.schema.json` (BigQuery's own
//! schema format, so `bq mk` and Terraform read it as is) and turned into SQLite DDL here. A
//! row is built by one function for both engines, so the two can never disagree on columns.

use std::sync::LazyLock;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::envelope::{Envelope, Metadata, format_time};
use crate::sink::StoredDelivery;

/// The schema file's text, compiled in.
pub const SCHEMA_JSON: &str = include_str!("../../infra/bigquery/events.schema.json");
/// The table name in both engines.
pub const TABLE: &str = "events";

/// One column as BigQuery describes it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub mode: String,
    #[serde(default)]
    pub description: String,
}

/// The parsed schema. The file is part of the build, so a broken file fails the tests.
pub static FIELDS: LazyLock<Vec<Field>> = LazyLock::new(|| {
    serde_json::from_str(SCHEMA_JSON).expect("infra/bigquery/events.schema.json is valid")
});

/// `CREATE TABLE` for SQLite. TIMESTAMPs are RFC 3339 text, which SQLite's date functions
/// read and which sorts in time order. `(source, id)` is unique: one row per delivery.
pub fn sqlite_ddl() -> String {
    let columns: Vec<String> = FIELDS
        .iter()
        .map(|f| {
            let kind = match f.kind.as_str() {
                "INTEGER" | "INT64" => "INTEGER",
                "FLOAT" | "FLOAT64" => "REAL",
                "BOOLEAN" | "BOOL" => "INTEGER",
                _ => "TEXT",
            };
            let null = if f.mode == "REQUIRED" {
                " NOT NULL"
            } else {
                ""
            };
            format!("    {} {kind}{null}", f.name)
        })
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (\n{},\n    UNIQUE (source, id)\n);\n\
         CREATE INDEX IF NOT EXISTS {TABLE}_ts ON {TABLE} (ts);",
        columns.join(",\n")
    )
}

/// The row for one delivery, keyed by column name, as both engines insert it.
///
/// A body longer than `max_payload_bytes` (the engine's row limit: BigQuery streaming
/// refuses rows over 10 MB) is left out of the row (`payload_encoding = "omitted"`); the
/// raw body is always in `archive_object`.
pub fn row(
    envelope: &Envelope,
    archive_object: &str,
    inserted_at: DateTime<Utc>,
    max_payload_bytes: usize,
) -> Map<String, Value> {
    let m = &envelope.meta;
    let (payload, encoding) = if envelope.body.len() > max_payload_bytes {
        (None, "omitted")
    } else {
        match std::str::from_utf8(&envelope.body) {
            Ok(text) => (Some(text.to_owned()), "utf8"),
            Err(_) => (
                Some(base64::engine::general_purpose::STANDARD.encode(&envelope.body)),
                "base64",
            ),
        }
    };
    let mut r = Map::new();
    r.insert("id".into(), m.delivery_id.clone().into());
    r.insert("ts".into(), format_time(m.received_at).into());
    r.insert("source".into(), m.source.clone().into());
    r.insert("provider".into(), m.provider.clone().into());
    r.insert("event_type".into(), m.event_type.clone().into());
    r.insert("payload".into(), payload.into());
    r.insert("payload_encoding".into(), encoding.into());
    r.insert("content_type".into(), m.content_type.clone().into());
    r.insert("request_id".into(), m.request_id.clone().into());
    r.insert("archive_object".into(), archive_object.into());
    r.insert("replay_count".into(), m.replay_count.into());
    r.insert("inserted_at".into(), format_time(inserted_at).into());
    r
}

/// The columns the replay index reads, in the order [`stored_delivery`] expects them.
pub const INDEX_COLUMNS: [&str; 9] = [
    "id",
    "ts",
    "source",
    "provider",
    "event_type",
    "content_type",
    "request_id",
    "archive_object",
    "replay_count",
];

/// Rebuilds a delivery's metadata from an index row ([`INDEX_COLUMNS`], as text; `ts` as
/// RFC 3339 or as milliseconds since the epoch).
///
/// # Errors
/// A required column is missing or unreadable; the message names it.
pub fn stored_delivery(row: &[Option<String>]) -> Result<StoredDelivery, String> {
    let col = |i: usize| row.get(i).cloned().flatten();
    let required =
        |i: usize| col(i).ok_or_else(|| format!("index row without {}", INDEX_COLUMNS[i]));
    let ts = required(1)?;
    let received_at = DateTime::parse_from_rfc3339(&ts)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ts.parse::<i64>()
                .ok()
                .and_then(DateTime::from_timestamp_millis)
        })
        .ok_or_else(|| format!("index row with an unreadable ts {ts:?}"))?;
    let replay_count = col(8)
        .map(|c| c.parse::<u32>())
        .transpose()
        .map_err(|e| format!("index row with an unreadable replay_count: {e}"))?
        .unwrap_or(0);
    Ok(StoredDelivery {
        meta: Metadata {
            delivery_id: required(0)?,
            received_at,
            source: required(2)?,
            provider: required(3)?,
            event_type: col(4),
            content_type: col(5),
            request_id: col(6).unwrap_or_default(),
            replay_count,
            extra: std::collections::BTreeMap::new(),
        },
        archive_object: required(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_row_gives_back_the_metadata_it_was_written_from() {
        let mut env = crate::test_support::envelope("d-1", b"{}");
        env.meta.replay_count = 2;
        env.meta.extra.clear();
        let r = row(&env, "gh/2026-11-22/x", Utc::now(), usize::MAX);
        let text = |v: &Value| match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
        let cells: Vec<Option<String>> = INDEX_COLUMNS.iter().map(|c| text(&r[*c])).collect();
        let stored = stored_delivery(&cells).unwrap();
        assert_eq!(stored.meta, env.meta);
        assert_eq!(stored.archive_object, "gh/2026-11-22/x");
        // BigQuery's rows come back with ts as epoch milliseconds.
        let mut millis = cells.clone();
        millis[1] = Some(env.meta.received_at.timestamp_millis().to_string());
        assert_eq!(stored_delivery(&millis).unwrap().meta, env.meta);
        let mut broken = cells;
        broken[7] = None;
        assert_eq!(
            stored_delivery(&broken).unwrap_err(),
            "index row without archive_object"
        );
    }

    #[test]
    fn every_schema_column_gets_a_value_and_nothing_else() {
        let env = crate::test_support::envelope("d1", b"\xff\xfe binary");
        let r = row(&env, "gh/obj", Utc::now(), usize::MAX);
        let mut cols: Vec<&str> = FIELDS.iter().map(|f| f.name.as_str()).collect();
        let mut keys: Vec<&str> = r.keys().map(String::as_str).collect();
        cols.sort_unstable();
        keys.sort_unstable();
        assert_eq!(cols, keys);
        assert_eq!(r["payload_encoding"], "base64");
        assert_eq!(r["payload"], "//4gYmluYXJ5");
        let r = row(&env, "gh/obj", Utc::now(), 4);
        assert_eq!(
            (&r["payload"], &r["payload_encoding"]),
            (&Value::Null, &Value::from("omitted"))
        );
    }

    #[test]
    fn ddl_has_every_column_and_the_unique_key() {
        let ddl = sqlite_ddl();
        for f in FIELDS.iter() {
            assert!(ddl.contains(&format!("    {} ", f.name)), "{}", f.name);
        }
        assert!(ddl.contains("id TEXT NOT NULL"));
        assert!(ddl.contains("UNIQUE (source, id)"));
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(&ddl).unwrap();
    }
}
