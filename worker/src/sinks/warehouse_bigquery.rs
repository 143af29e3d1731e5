//! The Google Cloud warehouse: BigQuery streaming inserts through `gcp-bigquery-client`.
//!
//! Rows are streamed with `tabledata.insertAll`, `insertId` = `{source}:{delivery id}`
//! (BigQuery de-duplicates on it, best-effort, for about a minute); the rows of the messages
//! in flight share requests ([`batches`]). A 200 answer can still carry `insertErrors`:
//! those rows were refused, which is permanent. 408, 429 and 5xx,
//! transport errors and token failures are transient; other 4xx are permanent.
//! The table is created from the one schema file under `infra/`, partitioned by day on `ts`,
//! and the views from `infra/sql/bigquery/` are created by `hookline provision`.

mod batches;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use gcp_bigquery_client::Client;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::dataset::Dataset;
use gcp_bigquery_client::model::field_type::FieldType;
use gcp_bigquery_client::model::query_parameter::QueryParameter;
use gcp_bigquery_client::model::query_parameter_type::QueryParameterType;
use gcp_bigquery_client::model::query_parameter_value::QueryParameterValue;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::table::Table;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use gcp_bigquery_client::model::table_schema::TableSchema;
use gcp_bigquery_client::model::time_partitioning::TimePartitioning;
use hookline_shared::config::BigQuerySettings;
use hookline_shared::envelope::Envelope;
use hookline_shared::provision::Provisioned;
use hookline_shared::schema;
use hookline_shared::sink::{IndexQuery, Outcome, SinkError, StoredDelivery, Warehouse};

/// The BigQuery views, `${project}` and `${dataset}` filled in at provisioning.
pub const VIEWS: &[(&str, &str)] = &[
    (
        "events_common",
        include_str!("../../../infra/sql/bigquery/events_common.sql"),
    ),
    (
        "github_issue_lifecycle",
        include_str!("../../../infra/sql/bigquery/github_issue_lifecycle.sql"),
    ),
];

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Streaming inserts refuse rows over 10 MB; rows that would be larger carry no payload
/// (the body stays in the archive object).
const MAX_ROW_BYTES: usize = 9_000_000;

#[derive(Clone)]
pub struct BigQueryWarehouse {
    client: Client,
    project: String,
    dataset: String,
    table: String,
    rows: batches::RowBatches,
}

impl std::fmt::Debug for BigQueryWarehouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BigQueryWarehouse")
            .field(
                "table",
                &format!("{}.{}.{}", self.project, self.dataset, self.table),
            )
            .finish_non_exhaustive()
    }
}

/// Emulators take no token.
#[derive(Clone)]
struct NoToken;

#[async_trait]
impl Authenticator for NoToken {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok(String::new())
    }
}

fn http_code(e: &BQError) -> Option<i64> {
    match e {
        BQError::ResponseError { error } => Some(error.error.code),
        BQError::RequestError(e) => e.status().map(|s| i64::from(s.as_u16())),
        _ => None,
    }
}

fn classify(what: &str, e: BQError) -> SinkError {
    match http_code(&e) {
        Some(code) if code == 408 || code == 429 || code >= 500 => {
            SinkError::transient(format!("{what}: HTTP {code}"), e)
        }
        Some(code) => SinkError::permanent(format!("{what}: HTTP {code}"), Some(e.into())),
        None => SinkError::transient(format!("{what}: {e}"), e),
    }
}

fn field_type(kind: &str) -> FieldType {
    match kind {
        "INTEGER" | "INT64" => FieldType::Integer,
        "FLOAT" | "FLOAT64" => FieldType::Float,
        "BOOLEAN" | "BOOL" => FieldType::Boolean,
        "TIMESTAMP" => FieldType::Timestamp,
        "JSON" => FieldType::Json,
        _ => FieldType::String,
    }
}

/// The table schema, from the one schema file.
pub fn table_schema() -> TableSchema {
    TableSchema::new(
        schema::FIELDS
            .iter()
            .map(|f| {
                let mut field = TableFieldSchema::new(&f.name, field_type(&f.kind));
                field.mode = Some(f.mode.clone());
                field.description = Some(f.description.clone());
                field
            })
            .collect(),
    )
}

impl BigQueryWarehouse {
    /// Connects anonymously to an emulator endpoint, else with Application Default
    /// Credentials.
    ///
    /// # Errors
    /// The client cannot be built or no credentials are found.
    pub async fn connect(project: &str, settings: &BigQuerySettings) -> Result<Self, BQError> {
        let http = reqwest012::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(BQError::RequestError)?;
        let mut builder = ClientBuilder::new();
        builder.with_client(http);
        let client = match &settings.endpoint {
            Some(endpoint) => {
                builder
                    .with_v2_base_url(format!("{endpoint}/bigquery/v2"))
                    .build_from_authenticator(Arc::new(NoToken))
                    .await?
            }
            None => builder.build_from_application_default_credentials().await?,
        };
        let rows = batches::RowBatches::start(
            batches::Table {
                client: client.clone(),
                project: project.to_owned(),
                dataset: settings.dataset.clone(),
                table: settings.table.clone(),
            },
            batches::IN_FLIGHT,
        );
        Ok(Self {
            client,
            project: project.to_owned(),
            dataset: settings.dataset.clone(),
            table: settings.table.clone(),
            rows,
        })
    }

    /// Runs a query and returns every row as strings (NULL as `None`).
    ///
    /// # Errors
    /// The query failed; BigQuery (and its emulator) can answer 200 with an `errors` list,
    /// which is reported as a failure too.
    pub async fn query(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, SinkError> {
        self.query_with(sql, Vec::new()).await
    }

    /// [`BigQueryWarehouse::query`] with named parameters (`@name`), each a (name, type,
    /// value) such as `("source", "STRING", "gh")`: values never become SQL text.
    ///
    /// # Errors
    /// As for [`BigQueryWarehouse::query`].
    pub async fn query_with(
        &self,
        sql: &str,
        params: Vec<(&str, &str, String)>,
    ) -> Result<Vec<Vec<Option<String>>>, SinkError> {
        let mut request = QueryRequest::new(sql);
        request.timeout_ms = Some(30_000);
        if !params.is_empty() {
            request.parameter_mode = Some("NAMED".into());
            request.query_parameters = Some(
                params
                    .into_iter()
                    .map(|(name, kind, value)| QueryParameter {
                        name: Some(name.into()),
                        parameter_type: Some(QueryParameterType {
                            r#type: kind.into(),
                            ..QueryParameterType::default()
                        }),
                        parameter_value: Some(QueryParameterValue {
                            value: Some(value),
                            ..QueryParameterValue::default()
                        }),
                    })
                    .collect(),
            );
        }
        let resp = self
            .client
            .job()
            .query(&self.project, request)
            .await
            .map_err(|e| classify("query", e))?;
        // A query BigQuery refuses outright fails the request (above). What a 200 answer
        // lists as `errors` may be warnings and does not say the job failed, and a job not
        // complete yet is slow, not wrong: both are tried again (the retries are bounded),
        // rather than dead-lettering the message on one slow or chatty query.
        if let Some(errors) = resp.errors.filter(|e| !e.is_empty()) {
            let messages: Vec<String> = errors.iter().filter_map(|e| e.message.clone()).collect();
            return Err(SinkError::transient(
                format!("query reported errors: {}", messages.join("; ")),
                std::io::Error::other("query errors"),
            ));
        }
        if resp.job_complete == Some(false) {
            return Err(SinkError::transient(
                "query did not complete within 30 s",
                std::io::Error::other("query incomplete"),
            ));
        }
        Ok(resp
            .rows
            .unwrap_or_default()
            .into_iter()
            .map(|row| {
                row.columns
                    .unwrap_or_default()
                    .into_iter()
                    .map(|cell| match cell.value {
                        None | Some(serde_json::Value::Null) => None,
                        Some(serde_json::Value::String(s)) => Some(s),
                        Some(other) => Some(other.to_string()),
                    })
                    .collect()
            })
            .collect())
    }

    /// Creates the dataset, the table and the views; returns what it did, per resource.
    ///
    /// # Errors
    /// BigQuery refused for another reason than "already exists".
    pub async fn provision(&self, location: &str) -> Result<Vec<Provisioned>, SinkError> {
        let exists = |e: &BQError| http_code(e) == Some(409);
        let mut done = Vec::new();
        let dataset_name = format!("dataset {}.{}", self.project, self.dataset);
        match self
            .client
            .dataset()
            .create(Dataset::new(&self.project, &self.dataset).location(location))
            .await
        {
            Ok(_) => done.push(Provisioned::Created(dataset_name)),
            Err(e) if exists(&e) => done.push(Provisioned::Exists(dataset_name)),
            Err(e) => return Err(classify("dataset create", e)),
        }
        let table_name = format!("table {}.{}.{}", self.project, self.dataset, self.table);
        let table = Table::new(&self.project, &self.dataset, &self.table, table_schema())
            .description("One row per webhook delivery (hookline).")
            .time_partitioning(TimePartitioning::per_day().field("ts"));
        match self.client.table().create(table).await {
            Ok(_) => done.push(Provisioned::Created(table_name)),
            Err(e) if exists(&e) => done.push(Provisioned::Exists(table_name)),
            Err(e) => return Err(classify("table create", e)),
        }
        for (name, sql) in VIEWS {
            let sql = sql
                .replace("${project}", &self.project)
                .replace("${dataset}", &self.dataset);
            self.query(&sql).await?;
            done.push(Provisioned::Replaced(format!(
                "view {}.{}.{name}",
                self.project, self.dataset
            )));
        }
        Ok(done)
    }
}

#[async_trait]
impl Warehouse for BigQueryWarehouse {
    async fn insert(
        &self,
        envelope: &Envelope,
        archive_object: &str,
    ) -> Result<Outcome, SinkError> {
        let now = Utc::now();
        let mut row = schema::row(envelope, archive_object, now, usize::MAX);
        // The limit is on the encoded row: base64 and JSON escaping can grow a body by a third.
        let encoded_size = |row: &serde_json::Map<String, serde_json::Value>| {
            serde_json::to_vec(row).map_or(usize::MAX, |v| v.len())
        };
        let mut bytes = encoded_size(&row);
        if bytes > MAX_ROW_BYTES {
            row = schema::row(envelope, archive_object, now, 0);
            bytes = encoded_size(&row);
        }
        let insert_id = format!("{}:{}", envelope.meta.source, envelope.meta.delivery_id);
        self.rows
            .insert(insert_id, serde_json::Value::Object(row), bytes)
            .await
    }

    async fn contains(
        &self,
        source: &str,
        delivery_id: &str,
        received_at: chrono::DateTime<Utc>,
    ) -> Result<bool, SinkError> {
        // Streamed rows are visible to queries within seconds; the receive-time window keeps
        // the query to a few daily partitions (a provider's resend of the same delivery
        // arrives within days, and its row may carry the first copy's receive time).
        let window = chrono::Duration::days(3);
        let millis = |t: chrono::DateTime<Utc>| t.timestamp_millis().to_string();
        let sql = format!(
            "SELECT COUNT(*) FROM `{}.{}.{}` WHERE source = @source AND id = @id \
             AND ts >= TIMESTAMP_MILLIS(@from) AND ts < TIMESTAMP_MILLIS(@to)",
            self.project, self.dataset, self.table
        );
        let rows = self
            .query_with(
                &sql,
                vec![
                    ("source", "STRING", source.to_owned()),
                    ("id", "STRING", delivery_id.to_owned()),
                    ("from", "INT64", millis(received_at - window)),
                    ("to", "INT64", millis(received_at + window)),
                ],
            )
            .await?;
        let count = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|c| c.parse::<u64>().ok())
            .ok_or_else(|| {
                SinkError::transient(
                    "row check answered no count",
                    std::io::Error::other("empty result"),
                )
            })?;
        Ok(count > 0)
    }

    async fn deliveries(&self, query: &IndexQuery) -> Result<Vec<StoredDelivery>, SinkError> {
        let columns: Vec<String> = schema::INDEX_COLUMNS
            .iter()
            .map(|c| {
                if *c == "ts" {
                    "UNIX_MILLIS(ts) AS ts".to_owned()
                } else {
                    (*c).to_owned()
                }
            })
            .collect();
        let millis = |t: chrono::DateTime<Utc>| t.timestamp_millis().to_string();
        let mut sql = format!(
            "SELECT {} FROM `{}.{}.{}` WHERE source = @source \
             AND ts >= TIMESTAMP_MILLIS(@since) AND ts < TIMESTAMP_MILLIS(@until)",
            columns.join(", "),
            self.project,
            self.dataset,
            self.table
        );
        let mut params = vec![
            ("source", "STRING", query.source.clone()),
            ("since", "INT64", millis(query.since)),
            ("until", "INT64", millis(query.until)),
        ];
        if let Some(event_type) = &query.event_type {
            sql.push_str(" AND event_type = @event_type");
            params.push(("event_type", "STRING", event_type.clone()));
        }
        if let Some((ts, id)) = &query.after {
            sql.push_str(
                " AND (ts > TIMESTAMP_MILLIS(@after_ts) \
                 OR (ts = TIMESTAMP_MILLIS(@after_ts) AND id > @after_id))",
            );
            params.push(("after_ts", "INT64", millis(*ts)));
            params.push(("after_id", "STRING", id.clone()));
        }
        sql.push_str(&format!(" ORDER BY ts, id LIMIT {}", query.page));
        self.query_with(&sql, params)
            .await?
            .iter()
            .map(|r| schema::stored_delivery(r).map_err(|m| SinkError::permanent(m, None)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, Respond, ResponseTemplate};

    use super::*;
    use crate::pipeline::tests::envelope;

    /// A warehouse on project `p-1`, dataset `ds`, whose `insertAll` on table `events` a fake
    /// BigQuery answers with `respond` (`expect`: how many requests it must see, if it
    /// matters). Keep the server: dropping it checks `expect` and stops the fake.
    pub(super) async fn fake_bigquery(
        respond: impl Respond + 'static,
        expect: Option<u64>,
    ) -> (MockServer, BigQueryWarehouse) {
        let server = MockServer::start().await;
        let mock = Mock::given(method("POST"))
            .and(path(
                "/bigquery/v2/projects/p-1/datasets/ds/tables/events/insertAll",
            ))
            .respond_with(respond);
        match expect {
            Some(n) => mock.expect(n).mount(&server).await,
            None => mock.mount(&server).await,
        }
        let settings = BigQuerySettings {
            dataset: "ds".into(),
            endpoint: Some(server.uri()),
            ..BigQuerySettings::default()
        };
        let warehouse = BigQueryWarehouse::connect("p-1", &settings).await.unwrap();
        (server, warehouse)
    }

    async fn insert_answered(status: u16, body: serde_json::Value) -> Result<Outcome, SinkError> {
        let (_server, warehouse) =
            fake_bigquery(ResponseTemplate::new(status).set_body_json(body), Some(1)).await;
        warehouse.insert(&envelope("d1", "push"), "gh/o").await
    }

    fn error_body(code: u16) -> serde_json::Value {
        serde_json::json!({"error": {"code": code, "message": "x", "errors": [{"reason": "backendError", "message": "x"}]}})
    }

    #[tokio::test]
    async fn insert_errors_in_a_200_are_a_permanent_failure() {
        let refused = serde_json::json!({
            "kind": "bigquery#tableDataInsertAllResponse",
            "insertErrors": [{"index": 0, "errors": [{"reason": "invalid", "location": "payload", "message": "no such field: x"}]}]
        });
        let err = insert_answered(200, refused).await.unwrap_err();
        assert!(!err.is_transient());
        assert!(
            err.to_string().contains("invalid: no such field: x"),
            "{err}"
        );
        let ok =
            serde_json::json!({"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": []});
        assert_eq!(insert_answered(200, ok).await.unwrap(), Outcome::Written);
    }

    #[tokio::test]
    async fn http_failures_are_classified() {
        assert!(
            insert_answered(503, error_body(503))
                .await
                .unwrap_err()
                .is_transient()
        );
        assert!(
            insert_answered(429, error_body(429))
                .await
                .unwrap_err()
                .is_transient()
        );
        assert!(
            !insert_answered(404, error_body(404))
                .await
                .unwrap_err()
                .is_transient()
        );
        assert!(
            !insert_answered(400, error_body(400))
                .await
                .unwrap_err()
                .is_transient()
        );
    }
}
