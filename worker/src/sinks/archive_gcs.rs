//! The Google Cloud archive: objects in a Cloud Storage bucket, through `gcloud-storage`.
//!
//! Writes are create-only: a multipart upload with `ifGenerationMatch=0`, so an existing
//! object answers 412, which means "already archived" (a redelivery). Multipart matters:
//! it is the upload path on which the emulator, like GCS, enforces the precondition.
//! Classification: 408, 429, 5xx, timeouts and connection errors are transient; other 4xx
//! (a missing bucket, a permission) are permanent.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::Error as GcsError;
use gcloud_storage::http::buckets::insert::{
    BucketCreationConfig, InsertBucketParam, InsertBucketRequest,
};
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use gcloud_storage::http::objects::upload::{UploadObjectRequest, UploadType};
use hookline_shared::config::GcsSettings;
use hookline_shared::envelope::Envelope;
use hookline_shared::provision::Provisioned;
use hookline_shared::sink::{Archive, Ledger, Outcome, SinkError};
use std::collections::BTreeMap;

/// Per-request timeout: the crate's default client has none.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct GcsArchive {
    client: Client,
    bucket: String,
}

impl std::fmt::Debug for GcsArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsArchive")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

/// Why the Cloud Storage client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GcsSetupError {
    #[error("cannot build the HTTP client")]
    Http(#[source] reqwest::Error),
    #[error(
        "no Google credentials found for Cloud Storage (set up Application Default Credentials, or set STORAGE_EMULATOR_HOST for an emulator)"
    )]
    Auth(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The HTTP status of a Cloud Storage error, whichever way the crate reported it.
fn status(e: &GcsError) -> Option<u16> {
    match e {
        GcsError::Response(r) => Some(r.code),
        GcsError::HttpClient(e) => e.status().map(|s| s.as_u16()),
        _ => None,
    }
}

fn classify(what: &str, e: GcsError) -> SinkError {
    match status(&e) {
        Some(code) if code == 408 || code == 429 || code >= 500 => {
            SinkError::transient(format!("{what}: HTTP {code}"), e)
        }
        Some(code) => SinkError::permanent(format!("{what}: HTTP {code}"), Some(e.into())),
        None => SinkError::transient(format!("{what}: {e}"), e),
    }
}

impl GcsArchive {
    /// Anonymous against an emulator endpoint, Application Default Credentials otherwise.
    ///
    /// # Errors
    /// The HTTP client cannot be built, or no credentials are found.
    pub async fn connect(settings: &GcsSettings) -> Result<Self, GcsSetupError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(GcsSetupError::Http)?;
        let base = ClientConfig {
            http: Some(reqwest_middleware::ClientBuilder::new(http).build()),
            ..ClientConfig::default()
        };
        let config = match &settings.endpoint {
            Some(endpoint) => ClientConfig {
                storage_endpoint: endpoint.clone(),
                ..base
            }
            .anonymous(),
            None => base
                .with_auth()
                .await
                .map_err(|e| GcsSetupError::Auth(Box::new(e)))?,
        };
        Ok(Self {
            client: Client::new(config),
            bucket: settings.bucket.clone(),
        })
    }

    /// Object names under `prefix`, every page.
    ///
    /// # Errors
    /// Classified as for writes.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, SinkError> {
        let mut names = Vec::new();
        let mut page_token = None;
        loop {
            let resp = self
                .client
                .list_objects(&ListObjectsRequest {
                    bucket: self.bucket.clone(),
                    prefix: Some(prefix.to_owned()),
                    page_token: page_token.take(),
                    ..Default::default()
                })
                .await
                .map_err(|e| classify("archive list", e))?;
            names.extend(resp.items.unwrap_or_default().into_iter().map(|o| o.name));
            match resp.next_page_token {
                Some(t) if !t.is_empty() => page_token = Some(t),
                _ => return Ok(names),
            }
        }
    }

    /// Creates the bucket.
    ///
    /// # Errors
    /// Cloud Storage refused for another reason.
    pub async fn provision(
        &self,
        project: &str,
        location: Option<&str>,
    ) -> Result<Provisioned, SinkError> {
        let name = format!("bucket gs://{}", self.bucket);
        let req = InsertBucketRequest {
            name: self.bucket.clone(),
            param: InsertBucketParam {
                project: project.to_owned(),
                ..Default::default()
            },
            bucket: BucketCreationConfig {
                location: location.unwrap_or("US").to_owned(),
                ..Default::default()
            },
        };
        match self.client.insert_bucket(&req).await {
            Ok(_) => Ok(Provisioned::Created(name)),
            Err(e) if status(&e) == Some(409) => Ok(Provisioned::Exists(name)),
            Err(e) => Err(classify("bucket create", e)),
        }
    }
}

impl GcsArchive {
    /// Creates `object` with `body` unless it exists (`ifGenerationMatch=0`, multipart).
    async fn create(
        &self,
        object: &str,
        body: Bytes,
        content_type: Option<String>,
    ) -> Result<Outcome, SinkError> {
        let meta = Object {
            name: object.to_owned(),
            content_type,
            ..Default::default()
        };
        let req = UploadObjectRequest {
            bucket: self.bucket.clone(),
            if_generation_match: Some(0),
            ..Default::default()
        };
        match self
            .client
            .upload_object(&req, body, &UploadType::Multipart(Box::new(meta)))
            .await
        {
            Ok(_) => Ok(Outcome::Written),
            Err(e) if status(&e) == Some(412) => Ok(Outcome::AlreadyDone),
            Err(e) => Err(classify("archive upload", e)),
        }
    }
}

/// Where ledger records live in the bucket; archive listings skip it.
pub const LEDGER_PREFIX: &str = "_ledger/";

fn ledger_dir(source: &str, delivery_id: &str) -> String {
    format!(
        "{LEDGER_PREFIX}{source}/{}/",
        hookline_shared::archive_name::encode_id(delivery_id)
    )
}

/// The Cloud Storage ledger: one create-only object per step, its content the note.
#[async_trait]
impl Ledger for GcsArchive {
    async fn done(
        &self,
        source: &str,
        delivery_id: &str,
    ) -> Result<BTreeMap<String, String>, SinkError> {
        let dir = ledger_dir(source, delivery_id);
        let names = self.list(&dir).await?;
        let mut done: BTreeMap<String, String> = names
            .iter()
            .map(|name| (name[dir.len()..].to_owned(), String::new()))
            .collect();
        // Only the archive name and the newest lease carry notes worth a read.
        let read: Vec<String> = crate::ownership::notes_to_read(done.keys().map(String::as_str))
            .into_iter()
            .map(str::to_owned)
            .collect();
        for step in read {
            let note = self.get(&format!("{dir}{step}")).await?;
            done.insert(step, String::from_utf8_lossy(&note).into_owned());
        }
        Ok(done)
    }

    async fn record(
        &self,
        source: &str,
        delivery_id: &str,
        step: &str,
        note: &str,
    ) -> Result<(), SinkError> {
        let name = format!("{}{step}", ledger_dir(source, delivery_id));
        self.create(
            &name,
            Bytes::from(note.to_owned()),
            Some("text/plain".into()),
        )
        .await
        .map(drop)
    }

    /// The uploads run at once (the steps are independent objects), except a lease's
    /// release, uploaded once the others are stored: it tells a waiting replay that the work
    /// is over, and must not be seen before the steps that say what was done (a replay
    /// seeing `slack.intent` without `slack` posts again).
    async fn record_all(
        &self,
        source: &str,
        delivery_id: &str,
        steps: &[(&str, &str)],
    ) -> Result<(), SinkError> {
        let (releases, others): (Vec<_>, Vec<_>) = steps
            .iter()
            .partition(|(step, _)| crate::ownership::is_release(step));
        for group in [others, releases] {
            futures_util::future::try_join_all(
                group
                    .iter()
                    .map(|(step, note)| self.record(source, delivery_id, step, note)),
            )
            .await?;
        }
        Ok(())
    }

    /// One create-only upload says who won; only a lost claim reads the winner's note.
    async fn claim(
        &self,
        source: &str,
        delivery_id: &str,
        step: &str,
        proposed: &str,
    ) -> Result<String, SinkError> {
        let name = format!("{}{step}", ledger_dir(source, delivery_id));
        let body = Bytes::from(proposed.to_owned());
        match self.create(&name, body, Some("text/plain".into())).await? {
            Outcome::Written => Ok(proposed.to_owned()),
            Outcome::AlreadyDone => {
                Ok(String::from_utf8_lossy(&self.get(&name).await?).into_owned())
            }
        }
    }

    /// The claims run at once: the steps are independent objects.
    async fn claim_all(
        &self,
        source: &str,
        delivery_id: &str,
        claims: &[(&str, &str)],
    ) -> Result<Vec<String>, SinkError> {
        futures_util::future::try_join_all(
            claims
                .iter()
                .map(|(step, proposed)| self.claim(source, delivery_id, step, proposed)),
        )
        .await
    }
}

#[async_trait]
impl Archive for GcsArchive {
    async fn put(&self, object: &str, envelope: &Envelope) -> Result<Outcome, SinkError> {
        self.create(
            object,
            envelope.body.clone(),
            envelope.meta.content_type.clone(),
        )
        .await
    }

    async fn get(&self, object: &str) -> Result<Bytes, SinkError> {
        let req = GetObjectRequest {
            bucket: self.bucket.clone(),
            object: object.to_owned(),
            ..Default::default()
        };
        self.client
            .download_object(&req, &Range::default())
            .await
            .map(Bytes::from)
            .map_err(|e| classify("archive download", e))
    }
}

#[cfg(test)]
mod tests {
    use wiremock::matchers::{method, path, path_regex, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::pipeline::tests::envelope;

    async fn upload_answered(status: u16, body: serde_json::Value) -> Result<Outcome, SinkError> {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/upload/storage/v1/b/bkt/o"))
            .and(query_param("uploadType", "multipart"))
            .and(query_param("ifGenerationMatch", "0"))
            .respond_with(ResponseTemplate::new(status).set_body_json(body))
            .expect(1)
            .mount(&server)
            .await;
        archive_on(&server)
            .await
            .put("gh/o", &envelope("d1", "push"))
            .await
    }

    /// The archive in bucket `bkt` of the fake Cloud Storage `server`.
    async fn archive_on(server: &MockServer) -> GcsArchive {
        let settings = GcsSettings {
            bucket: "bkt".into(),
            location: None,
            endpoint: Some(server.uri()),
        };
        GcsArchive::connect(&settings).await.unwrap()
    }

    fn error_body(code: u16, errors: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"error": {"code": code, "message": "m", "errors": errors}})
    }

    #[tokio::test]
    async fn precondition_failed_means_already_archived_in_either_error_shape() {
        // fake-gcs-server's shape (`"errors": null`) and Cloud Storage's (a list).
        let emulator = error_body(412, serde_json::Value::Null);
        assert_eq!(
            upload_answered(412, emulator).await.unwrap(),
            Outcome::AlreadyDone
        );
        let real = error_body(
            412,
            serde_json::json!([{"domain": "global", "reason": "conditionNotMet", "message": "m"}]),
        );
        assert_eq!(
            upload_answered(412, real).await.unwrap(),
            Outcome::AlreadyDone
        );
    }

    #[tokio::test]
    async fn http_failures_are_classified() {
        let list = serde_json::json!([{"domain": "global", "reason": "r", "message": "m"}]);
        assert!(
            upload_answered(503, error_body(503, list.clone()))
                .await
                .unwrap_err()
                .is_transient()
        );
        assert!(
            upload_answered(429, error_body(429, list.clone()))
                .await
                .unwrap_err()
                .is_transient()
        );
        assert!(
            !upload_answered(403, error_body(403, list.clone()))
                .await
                .unwrap_err()
                .is_transient()
        );
        assert!(
            !upload_answered(404, error_body(404, serde_json::Value::Null))
                .await
                .unwrap_err()
                .is_transient()
        );
    }

    #[tokio::test]
    async fn the_ledger_reads_only_the_archive_name_and_the_newest_lease() {
        let server = MockServer::start().await;
        let dir = ledger_dir("gh", "d1");
        let steps = [
            "archive",
            "archive.name",
            "lease.1",
            "lease.2",
            "lease.3",
            "slack",
        ];
        let items: Vec<_> = steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "kind": "storage#object", "name": format!("{dir}{s}"), "id": s,
                    "bucket": "bkt", "selfLink": "l", "mediaLink": "l",
                    "generation": "1", "metageneration": "1",
                })
            })
            .collect();
        Mock::given(method("GET"))
            .and(path("/storage/v1/b/bkt/o"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"kind": "storage#objects", "items": items})),
            )
            .expect(1)
            .mount(&server)
            .await;
        for (step, reads, note) in [
            ("archive.name", 1, "gh/2026/d1.json"),
            ("lease.3", 1, "m7 attempt=2 nonce=ab"),
            ("lease.2", 0, "m6 attempt=1 nonce=cd"),
            ("lease.1", 0, "m5 attempt=1 nonce=ef"),
        ] {
            Mock::given(method("GET"))
                .and(path_regex(format!(r"/o/.*{}$", regex_escape(step))))
                .respond_with(ResponseTemplate::new(200).set_body_string(note))
                .expect(reads)
                .mount(&server)
                .await;
        }
        let done = archive_on(&server).await.done("gh", "d1").await.unwrap();
        assert_eq!(done.len(), steps.len());
        assert_eq!(done["archive.name"], "gh/2026/d1.json");
        assert_eq!(done["lease.3"], "m7 attempt=2 nonce=ab");
        assert_eq!(done["lease.1"], "");
        assert_eq!(done["slack"], "");
        // Dropping the server checks each mock's expected number of requests.
    }

    /// A lease's release is uploaded only once the other steps are stored; when one of
    /// them fails, not at all.
    #[tokio::test]
    async fn the_ledger_uploads_a_release_after_the_other_steps() {
        use wiremock::matchers::body_string_contains;
        for others_stored in [false, true] {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .and(body_string_contains("lease.1.released"))
                .respond_with(ResponseTemplate::new(200).set_body_json(object_json("r")))
                .with_priority(1)
                .expect(u64::from(others_stored))
                .mount(&server)
                .await;
            // Answered late, so that uploads made at once would all have been sent.
            let answer = if others_stored {
                ResponseTemplate::new(200).set_body_json(object_json("o"))
            } else {
                ResponseTemplate::new(403).set_body_json(error_body(403, serde_json::Value::Null))
            }
            .set_delay(std::time::Duration::from_millis(300));
            Mock::given(method("POST"))
                .respond_with(answer)
                .with_priority(2)
                .expect(2)
                .mount(&server)
                .await;
            let steps = [("slack", ""), ("lease.1.released", ""), ("warehouse", "")];
            let got = archive_on(&server)
                .await
                .record_all("gh", "d1", &steps)
                .await;
            assert_eq!(got.is_ok(), others_stored, "{got:?}");
            // Dropping the server checks each mock's expected number of requests.
        }
    }

    fn object_json(name: &str) -> serde_json::Value {
        serde_json::json!({
            "kind": "storage#object", "name": name, "id": name, "bucket": "bkt",
            "selfLink": "l", "mediaLink": "l", "generation": "1", "metageneration": "1",
        })
    }

    fn regex_escape(s: &str) -> String {
        s.replace('.', r"\.")
    }
}
