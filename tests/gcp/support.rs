//! Emulator endpoints, unique resource names per test, provisioning through the real
//! `hookline provision`, and in-process services on the Google Cloud engines.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hookline_ingest::AppState;
use hookline_shared::config::Settings;
use hookline_worker::Pipeline;
use secrecy::SecretString;
use tokio::sync::oneshot;

pub const GITHUB_SECRET: &str = "gh-gcp-secret";
pub const PROJECT: &str = "hookline-test";
pub const ISSUES_OPENED: &str = include_str!("../../examples/payloads/github-issues-opened.json");
#[path = "../fixtures/http.rs"]
#[allow(dead_code)] // shared fixture; this binary needs no free ports
mod http;
pub use http::{post, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_hookline");
const EMULATOR_VARS: [&str; 3] = [
    "PUBSUB_EMULATOR_HOST",
    "STORAGE_EMULATOR_HOST",
    "BIGQUERY_EMULATOR_HOST",
];

/// The emulator variables, or a failure that says how to get them.
pub fn emulator_env() -> Vec<(String, String)> {
    let missing: Vec<&str> = EMULATOR_VARS
        .iter()
        .copied()
        .filter(|v| std::env::var(v).map_or(true, |x| x.is_empty()))
        .collect();
    assert!(
        missing.is_empty(),
        "this test needs the Google Cloud emulators, but {missing:?} is not set.\n\
         Start them with `scripts/emulators.sh start && source target/emulators/env`,\n\
         or run the whole suite with `scripts/test.sh`, which starts and stops them."
    );
    EMULATOR_VARS
        .iter()
        .map(|v| (v.to_string(), std::env::var(v).unwrap()))
        .collect()
}

/// One test's private topics, subscriptions, bucket and dataset.
pub struct GcpEnv {
    /// Holds the configuration file; removed when the test ends.
    _dir: tempfile::TempDir,
    pub settings: Settings,
    pub suffix: String,
    pub config_path: PathBuf,
}

impl GcpEnv {
    /// `extra` is appended inside `[queue.pubsub]`, for tests that need other policies.
    pub fn new(pubsub_extra: &str) -> Self {
        let env = emulator_env();
        let suffix = format!("{:08x}", rand::random::<u32>());
        let dir = tempfile::tempdir().unwrap();
        // No retry policy unless a test asks for one: the emulator's retry-policy path can
        // stop redelivering for good (tests/faults/main.rs says how). Without one the worker
        // holds a nack for the backoff itself; none here, unless a test asks for one.
        let retry_policy = match (
            pubsub_extra.contains("retry_policy"),
            pubsub_extra.contains("backoff"),
        ) {
            (true, _) => "",
            (false, true) => "retry_policy = false",
            (false, false) => "retry_policy = false\nmin_backoff_secs = 0",
        };
        let toml = format!(
            r#"
[server]
host = "127.0.0.1"
max_body_bytes = 33554432
[gcp]
project = "{PROJECT}"
[queue]
backend = "pubsub"
[queue.pubsub]
topic = "events-{suffix}"
subscription = "worker-{suffix}"
dead_letter_topic = "dead-{suffix}"
dead_letter_subscription = "dead-ops-{suffix}"
{retry_policy}
{pubsub_extra}
[archive]
backend = "gcs"
[archive.gcs]
bucket = "archive-{suffix}"
[warehouse]
backend = "bigquery"
[warehouse.bigquery]
dataset = "ds_{suffix}"
[worker]
sink_retry_min_ms = 10
sink_retry_max_ms = 50
[slack]
webhook_url_env = "HOOKLINE_TEST_SLACK_URL"
[sources.gh]
provider = "github"
secrets = ["{GITHUB_SECRET}"]
"#
        );
        let config_path = dir.path().join("hookline.toml");
        std::fs::write(&config_path, &toml).unwrap();
        let settings = Settings::from_parts(&toml, env).unwrap();
        Self {
            _dir: dir,
            settings,
            suffix,
            config_path,
        }
    }

    /// Runs `hookline provision` with this configuration; returns its output lines.
    pub fn provision(&self) -> Vec<String> {
        let out = std::process::Command::new(BIN)
            .args(["--config", self.config_path.to_str().unwrap(), "provision"])
            .env_remove("HOOKLINE_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "provision failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn pubsub_url(&self, path: &str) -> String {
        format!(
            "{}/v1/projects/{PROJECT}/{path}",
            self.settings.queue.pubsub.endpoint.as_deref().unwrap()
        )
    }

    /// Adds a subscription `name` on `topic` through the emulator's REST API, to read what
    /// was published exactly as Pub/Sub holds it.
    pub async fn tap(&self, name: &str, topic: &str) {
        let resp = reqwest::Client::new()
            .put(self.pubsub_url(&format!("subscriptions/{name}")))
            .json(&serde_json::json!({ "topic": format!("projects/{PROJECT}/topics/{topic}"), "ackDeadlineSeconds": 60 }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    }

    /// Pulls (and acknowledges) up to `max` messages from a subscription through REST:
    /// (raw data, attributes).
    pub async fn pull_raw(
        &self,
        subscription: &str,
        max: usize,
    ) -> Vec<(Vec<u8>, serde_json::Map<String, serde_json::Value>)> {
        let client = reqwest::Client::new();
        // The emulator holds a pull on an empty subscription open for a long time: wait a
        // few seconds at most, and read a timeout as "nothing there".
        let resp: serde_json::Value = match client
            .post(self.pubsub_url(&format!("subscriptions/{subscription}:pull")))
            .json(&serde_json::json!({ "maxMessages": max, "returnImmediately": false }))
            .timeout(std::time::Duration::from_secs(4))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap(),
            Err(e) if e.is_timeout() => serde_json::json!({}),
            Err(e) => panic!("pull failed: {e}"),
        };
        let received = resp["receivedMessages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ack_ids: Vec<_> = received.iter().map(|m| m["ackId"].clone()).collect();
        if !ack_ids.is_empty() {
            client
                .post(self.pubsub_url(&format!("subscriptions/{subscription}:acknowledge")))
                .json(&serde_json::json!({ "ackIds": ack_ids }))
                .send()
                .await
                .unwrap();
        }
        received
            .iter()
            .map(|m| {
                let data = m["message"]["data"].as_str().unwrap_or("");
                (
                    base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .unwrap(),
                    m["message"]["attributes"]
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Archive object names and sizes (not the ledger's), through the JSON API.
    pub async fn objects(&self) -> Vec<(String, u64)> {
        let url = format!(
            "{}/storage/v1/b/{}/o",
            self.settings.archive.gcs.endpoint.as_deref().unwrap(),
            self.settings.archive.gcs.bucket
        );
        let resp: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        resp["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|o| {
                !o["name"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("_ledger/")
            })
            .map(|o| {
                (
                    o["name"].as_str().unwrap().to_owned(),
                    o["size"].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect()
    }

    /// Rows of a query against this test's dataset (`{ds}.table` names one of its tables).
    pub async fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let warehouse = hookline_worker::sinks::warehouse_bigquery::BigQueryWarehouse::connect(
            PROJECT,
            &self.settings.warehouse.bigquery,
        )
        .await
        .unwrap();
        warehouse.query(&self.qualify(sql)).await.unwrap()
    }

    /// Replaces each `{ds}.table` with the quoted `` `project.dataset.table` ``.
    fn qualify(&self, sql: &str) -> String {
        let dataset = &self.settings.warehouse.bigquery.dataset;
        let mut parts = sql.split("{ds}.");
        let mut out = parts.next().unwrap_or_default().to_owned();
        for part in parts {
            let end = part
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(part.len());
            out.push_str(&format!(
                "`{PROJECT}.{dataset}.{}`{}",
                &part[..end],
                &part[end..]
            ));
        }
        out
    }
}

/// A running in-process service.
pub struct Running<T> {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<T>,
}

impl<T> Running<T> {
    pub async fn stop(mut self) -> T {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap()
    }
}

/// Ingest on the configured (Pub/Sub) queue; returns its base URL.
pub async fn spawn_ingest(env: &GcpEnv) -> (String, Running<std::io::Result<()>>) {
    let publisher = hookline::engines::open_publisher(&env.settings)
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let sources = env.settings.resolve_sources(|_| None).unwrap();
    let state = AppState::new(sources, publisher, env.settings.server.clone());
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(hookline_ingest::run(listener, state, 1, async {
        let _ = rx.await;
    }));
    (
        url,
        Running {
            stop: Some(tx),
            task,
        },
    )
}

/// The worker on the configured engines.
pub async fn spawn_worker(env: &GcpEnv, slack_url: Option<String>) -> Running<()> {
    let pipeline = Pipeline::from_settings(&env.settings, slack_url.map(SecretString::from))
        .await
        .unwrap();
    let subscriber = hookline::engines::open_subscriber(&env.settings)
        .await
        .unwrap();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(hookline_worker::runner::run(
        subscriber,
        Arc::new(pipeline),
        hookline_worker::runner::Limits {
            concurrency: 4,
            max_bytes: usize::MAX,
        },
        Duration::from_secs(5),
        async {
            let _ = rx.await;
        },
    ));
    Running {
        stop: Some(tx),
        task,
    }
}

/// Headers GitHub would send for `body`, signed with this suite's secret.
pub fn github_headers(body: &[u8], event: &str, delivery: &str) -> Vec<(String, String)> {
    http::github_headers(GITHUB_SECRET, body, event, delivery)
}
