//! The rows of every message in flight go to BigQuery in shared `insertAll` requests.
//!
//! Why: one request per row costs a round trip per message, and BigQuery's quotas and its
//! emulator both favour fewer, larger requests (the emulator snapshots the whole table on
//! every `insertAll`, so one row per request slows down as the table grows). A row waits
//! only while every request slot is busy: the first row of an idle worker goes out at once,
//! and under load whatever queued meanwhile shares the next request (up to [`MAX_ROWS`] rows
//! and [`MAX_REQUEST_BYTES`]).
//!
//! Requests set `skipInvalidRows`, so one refused row does not stop the others of its
//! request; each caller gets its own row's outcome. A failed request fails each of its rows
//! the same way (transient or permanent).

use std::collections::HashMap;
use std::sync::Arc;

use gcp_bigquery_client::Client;
use gcp_bigquery_client::model::table_data_insert_all_request::TableDataInsertAllRequest;
use gcp_bigquery_client::model::table_data_insert_all_request_rows::TableDataInsertAllRequestRows;
use gcp_bigquery_client::model::table_data_insert_all_response::TableDataInsertAllResponse;
use hookline_shared::sink::{Outcome, SinkError};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// BigQuery's recommended maximum rows per request.
pub const MAX_ROWS: usize = 500;
/// The request limit is 10 MB; rows are at most 9 MB each, so a larger one goes alone.
pub const MAX_REQUEST_BYTES: usize = 9_500_000;
/// Requests in flight at once.
pub const IN_FLIGHT: usize = 4;
/// Rows waiting for a request beyond this many are refused (a transient error).
const BACKLOG: usize = 4096;

/// One row and who waits for it.
struct Pending {
    row: TableDataInsertAllRequestRows,
    bytes: usize,
    reply: oneshot::Sender<Result<Outcome, SinkError>>,
}

/// Where the rows go.
#[derive(Clone)]
pub struct Table {
    pub client: Client,
    pub project: String,
    pub dataset: String,
    pub table: String,
}

/// A handle on the task that batches rows. Cheap to clone.
#[derive(Clone)]
pub struct RowBatches {
    rows: mpsc::Sender<Pending>,
}

impl RowBatches {
    /// Starts the batching task with at most `in_flight` requests at once.
    pub fn start(table: Table, in_flight: usize) -> Self {
        let (rows, rx) = mpsc::channel(BACKLOG);
        tokio::spawn(batch_loop(table, rx, in_flight.max(1)));
        Self { rows }
    }

    /// Inserts one row (its encoded size `bytes`) and waits for its own outcome.
    ///
    /// # Errors
    /// The row was refused (permanent), its request failed (classified), or the batching
    /// task is overloaded or gone (transient).
    pub async fn insert(
        &self,
        insert_id: String,
        row: serde_json::Value,
        bytes: usize,
    ) -> Result<Outcome, SinkError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            row: TableDataInsertAllRequestRows {
                insert_id: Some(insert_id),
                json: row,
            },
            bytes,
            reply,
        };
        self.rows.try_send(pending).map_err(|e| {
            SinkError::transient(
                "too many rows waiting for BigQuery",
                std::io::Error::other(e.to_string()),
            )
        })?;
        answer
            .await
            .map_err(|e| SinkError::transient("the BigQuery batching task stopped", e))?
    }
}

async fn batch_loop(table: Table, mut rx: mpsc::Receiver<Pending>, in_flight: usize) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Waiting for a slot is what lets rows gather: they queue in the channel meanwhile.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_ROWS {
            let Ok(next) = rx.try_recv() else { break };
            if bytes + next.bytes > MAX_REQUEST_BYTES {
                carried = Some(next);
                break;
            }
            bytes += next.bytes;
            batch.push(next);
        }
        let table = table.clone();
        tokio::spawn(async move {
            send(&table, batch).await;
            drop(slot);
        });
    }
}

/// Sends one request and answers each of its rows.
async fn send(table: &Table, batch: Vec<Pending>) {
    let mut request = TableDataInsertAllRequest::new();
    request.skip_invalid_rows();
    let mut replies = Vec::with_capacity(batch.len());
    let mut rows = Vec::with_capacity(batch.len());
    for p in batch {
        rows.push(p.row);
        replies.push(p.reply);
    }
    // Cannot fail: the rows are JSON already.
    let _ = request.add_rows(rows);
    let response = table
        .client
        .tabledata()
        .insert_all(&table.project, &table.dataset, &table.table, request)
        .await;
    match response {
        Ok(response) => {
            let mut refused = refused_rows(response);
            for (i, reply) in replies.into_iter().enumerate() {
                let _ = reply.send(match refused.remove(&i) {
                    Some(e) => Err(e),
                    None => Ok(Outcome::Written),
                });
            }
        }
        Err(e) => {
            let failure = super::classify("insertAll", e);
            for reply in replies {
                let _ = reply.send(Err(same_failure(&failure)));
            }
        }
    }
}

/// Reasons BigQuery gives for a row it did not insert although the row may be fine:
/// `stopped` (held back by another row, without `skipInvalidRows`), and the failures its
/// documentation says to retry (`backendError`, `internalError`, `timeout`, and the rate and
/// quota limits).
const WORTH_SENDING_AGAIN: [&str; 6] = [
    "stopped",
    "backendError",
    "internalError",
    "timeout",
    "rateLimitExceeded",
    "quotaExceeded",
];

/// The rows a 200 answer refused, by index. A row whose every reason is one of
/// [`WORTH_SENDING_AGAIN`] fails transiently; any other reason (`invalid`) is permanent.
fn refused_rows(response: TableDataInsertAllResponse) -> HashMap<usize, SinkError> {
    let mut refused = HashMap::new();
    for row in response.insert_errors.unwrap_or_default() {
        let Some(index) = row.index.and_then(|i| usize::try_from(i).ok()) else {
            continue;
        };
        let problems = row.errors.unwrap_or_default();
        let reasons: Vec<String> = problems
            .iter()
            .map(|p| {
                format!(
                    "{}: {}",
                    p.reason.as_deref().unwrap_or("?"),
                    p.message.as_deref().unwrap_or("?")
                )
            })
            .collect();
        let worth_again = !problems.is_empty()
            && problems.iter().all(|p| {
                p.reason
                    .as_deref()
                    .is_some_and(|r| WORTH_SENDING_AGAIN.contains(&r))
            });
        let message = format!("BigQuery refused the row ({})", reasons.join("; "));
        refused.insert(
            index,
            if worth_again {
                SinkError::transient(message, std::io::Error::other("worth sending again"))
            } else {
                SinkError::permanent(message, None)
            },
        );
    }
    refused
}

/// The failure of a request, once per row (a `SinkError` cannot be cloned: the copies keep
/// the message and the classification).
fn same_failure(e: &SinkError) -> SinkError {
    match e {
        SinkError::Transient {
            message,
            retry_after,
            ..
        } => SinkError::Transient {
            message: message.clone(),
            retry_after: *retry_after,
            source: Some(e.to_string().into()),
        },
        SinkError::Permanent { message, .. } => {
            SinkError::permanent(message.clone(), Some(e.to_string().into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};
    use wiremock::{Request, Respond, ResponseTemplate};

    use super::*;

    /// Refuses the rows whose insert id contains "bad", after a delay that keeps the request
    /// slot busy while the next rows queue up.
    struct RefuseBad;

    impl Respond for RefuseBad {
        fn respond(&self, request: &Request) -> ResponseTemplate {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            let refused: Vec<Value> = body["rows"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .filter(|(_, r)| r["insertId"].as_str().unwrap().contains("bad"))
                .map(|(i, _)| {
                    json!({"index": i, "errors": [{"reason": "invalid", "message": "no such field: x"}]})
                })
                .collect();
            ResponseTemplate::new(200)
                .set_body_json(
                    json!({"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": refused}),
                )
                .set_delay(Duration::from_millis(300))
        }
    }

    #[tokio::test]
    async fn rows_that_wait_for_a_slot_share_a_request_and_get_their_own_outcome() {
        let (server, warehouse) = super::super::tests::fake_bigquery(RefuseBad, None).await;
        let rows = RowBatches::start(
            Table {
                client: warehouse.client.clone(),
                project: "p-1".into(),
                dataset: "ds".into(),
                table: "events".into(),
            },
            1,
        );
        let insert = |id: &str| {
            let (rows, id) = (rows.clone(), id.to_owned());
            tokio::spawn(async move { rows.insert(id, json!({"id": "x"}), 20).await })
        };
        let first = insert("good-0");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = [insert("good-1"), insert("bad-2"), insert("good-3")];
        assert_eq!(first.await.unwrap().unwrap(), Outcome::Written);
        let mut outcomes = Vec::new();
        for w in waiting {
            outcomes.push(w.await.unwrap());
        }
        assert_eq!(outcomes[0].as_ref().unwrap(), &Outcome::Written);
        let refused = outcomes[1].as_ref().unwrap_err();
        assert!(!refused.is_transient());
        assert!(
            refused.to_string().contains("no such field: x"),
            "{refused}"
        );
        assert_eq!(outcomes[2].as_ref().unwrap(), &Outcome::Written);
        let requests: Vec<Value> = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect();
        let sizes: Vec<usize> = requests
            .iter()
            .map(|r| r["rows"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, [1, 3], "the three rows that waited went together");
        assert!(requests.iter().all(|r| r["skipInvalidRows"] == true));
    }

    #[test]
    fn a_row_held_back_or_failed_by_bigquery_is_worth_sending_again_an_invalid_one_not() {
        let response: TableDataInsertAllResponse = serde_json::from_value(json!({
            "insertErrors": [
                {"index": 0, "errors": [{"reason": "invalid", "message": "bad value"}]},
                {"index": 1, "errors": [{"reason": "stopped", "message": ""}]},
                {"index": 3, "errors": [{"reason": "backendError", "message": "try again"}]},
                {"index": 4, "errors": [{"reason": "timeout", "message": ""},
                                        {"reason": "invalid", "message": "bad value"}]},
                {"index": 5, "errors": []}
            ]
        }))
        .unwrap();
        let refused = refused_rows(response);
        assert!(!refused[&0].is_transient());
        assert!(refused[&1].is_transient());
        assert!(!refused.contains_key(&2));
        assert!(
            refused[&3].is_transient(),
            "BigQuery says to retry a backendError"
        );
        assert!(!refused[&4].is_transient(), "an invalid row stays invalid");
        assert!(
            !refused[&5].is_transient(),
            "no reason given: not known to pass"
        );
    }
}
