//! Typed configuration, layered: compiled-in defaults, then the TOML file, then
//! `HOOKLINE__SECTION__KEY=value` environment variables, then Cloud Run's `PORT`.
//!
//! Secrets are never required in the file: a source lists `secrets_env`, the names of
//! environment variables holding its secrets (Secret Manager mounts them that way on Cloud
//! Run). [`Settings::resolve_sources`] reads them once at start and fails with the variable's
//! name when one is missing, so a misconfigured service never starts half-working.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use crate::verify::scheme::{HmacScheme, Template, Timestamped};
use crate::verify::{Algorithm, Encoding, Provider, standard_webhooks};

/// Environment variable naming the configuration file when `--config` is not given.
pub const CONFIG_ENV: &str = "HOOKLINE_CONFIG";
/// Prefix of environment overrides: `HOOKLINE__QUEUE__BACKEND=pubsub`.
pub const ENV_PREFIX: &str = "HOOKLINE__";
/// The variables Google's client libraries read, honoured the same way here.
const GOOGLE_CONVENTIONS: &[&str] = &[
    "GOOGLE_CLOUD_PROJECT",
    "PUBSUB_EMULATOR_HOST",
    "STORAGE_EMULATOR_HOST",
    "BIGQUERY_EMULATOR_HOST",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration is not valid TOML or does not fit the settings")]
    Parse(#[source] toml::de::Error),
    #[error("environment override {var} is not usable: {reason}")]
    Override { var: String, reason: String },
    #[error("source `{source_name}`: {reason}")]
    Source { source_name: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

/// Everything hookline can be configured with. Each section documents its defaults.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub gcp: GcpSettings,
    pub queue: QueueSettings,
    pub archive: ArchiveSettings,
    pub warehouse: WarehouseSettings,
    pub slack: SlackSettings,
    pub worker: WorkerSettings,
    /// The webhook sources, by name: `POST /hooks/{name}`.
    pub sources: BTreeMap<String, SourceSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Listen address. Cloud Run needs 0.0.0.0.
    pub host: String,
    /// Listen port; the `PORT` environment variable (Cloud Run's convention) wins.
    pub port: u16,
    /// Larger bodies are refused with 413. GitHub caps payloads at 25 MB.
    pub max_body_bytes: usize,
    /// How long a request may wait for the queue to confirm a publish before 503.
    pub publish_timeout_ms: u64,
    /// The `Retry-After` sent with 503 answers.
    pub retry_after_secs: u32,
    /// A body not fully received within this is refused with 408 (slow senders).
    pub body_read_timeout_ms: u64,
    /// Request line and headers not received within this: the connection gets 408.
    pub header_read_timeout_ms: u64,
    /// More request headers than this, or more header bytes than `max_header_bytes`: 431.
    /// Providers send a few dozen headers of a few KB at most.
    pub max_headers: usize,
    pub max_header_bytes: usize,
    /// Serve `GET /metrics`. Ingest is public on Cloud Run, and its metrics show configured
    /// source names and request rates: turn this off there if that matters.
    pub metrics: bool,
    /// Webhook requests handled at once per process; beyond it, 503 + `Retry-After` rather
    /// than an unbounded backlog.
    pub max_concurrent_requests: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8080,
            max_body_bytes: 10 * 1024 * 1024,
            publish_timeout_ms: 5_000,
            retry_after_secs: 5,
            body_read_timeout_ms: 10_000,
            header_read_timeout_ms: 5_000,
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            metrics: true,
            max_concurrent_requests: 512,
        }
    }
}

impl ServerSettings {
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }
}

/// Which engine backs a trait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueueBackend {
    #[default]
    Embedded,
    Pubsub,
    /// Benchmarks only: ingest verifies and answers 200, then throws the message away. It
    /// measures the ceiling of receive + verify (BENCHMARKS.md, contender 1); ingest logs a
    /// warning at start and the worker refuses it.
    BenchDiscard,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    pub backend: QueueBackend,
    pub embedded: EmbeddedQueueSettings,
    pub pubsub: PubsubSettings,
}

/// Google Cloud settings shared by the Pub/Sub, Cloud Storage and BigQuery engines.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct GcpSettings {
    /// The project id; `GOOGLE_CLOUD_PROJECT` is used when this is empty.
    pub project: String,
}

/// Pub/Sub topics and subscriptions. `provision` creates them with these settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PubsubSettings {
    pub topic: String,
    /// The worker's subscription on `topic`, with the dead-letter and retry policies below.
    pub subscription: String,
    pub dead_letter_topic: String,
    /// Operators' subscription on the dead-letter topic (what `replay` reads).
    pub dead_letter_subscription: String,
    pub ack_deadline_secs: u32,
    /// Deliveries before Pub/Sub forwards a message to the dead-letter topic (5 to 100).
    pub max_delivery_attempts: u32,
    /// Whether the subscription has a retry policy: after a nack, Pub/Sub waits between
    /// `min_backoff_secs` and `max_backoff_secs` (0 to 600 s, growing with each attempt)
    /// before it redelivers. Without one it redelivers at once, so the worker holds a nacked
    /// message for that backoff itself first (or a sink down for a minute would use up the
    /// delivery attempts in seconds). The emulator's retry-policy path can stop redelivering
    /// for good (see `tests/faults`), so the tests run without.
    pub retry_policy: bool,
    pub min_backoff_secs: u32,
    pub max_backoff_secs: u32,
    /// Bodies larger than this are stored in the archive first and published as a pointer
    /// (a claim check): a Pub/Sub message holds 10 MB, attributes included.
    pub claim_check_bytes: usize,
    /// Ingest's publish lanes (`queue::publish_lanes`): one request in flight, carrying
    /// every message that waited for it, so batches grow with the load; the other lanes are
    /// spares for a request in flight longer than 20 ms.
    pub publish_lanes: usize,
    /// `http://host:port` of an emulator; set from `PUBSUB_EMULATOR_HOST` when empty.
    pub endpoint: Option<String>,
}

impl Default for PubsubSettings {
    fn default() -> Self {
        Self {
            topic: "hookline-events".into(),
            subscription: "hookline-worker".into(),
            dead_letter_topic: "hookline-events-dead-letter".into(),
            dead_letter_subscription: "hookline-dead-letter-operators".into(),
            ack_deadline_secs: 60,
            max_delivery_attempts: 5,
            retry_policy: true,
            min_backoff_secs: 10,
            max_backoff_secs: 600,
            claim_check_bytes: 9_500_000,
            publish_lanes: 2,
            endpoint: None,
        }
    }
}

/// The on-disk queue. Its semantics copy a Pub/Sub subscription with a dead-letter policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedQueueSettings {
    /// The SQLite file shared by ingest and worker (they may be separate processes).
    pub path: PathBuf,
    /// An unacknowledged message is delivered again after this long.
    pub ack_deadline_secs: u64,
    /// After this many deliveries without an ack, the message moves to the dead-letter queue
    /// (Pub/Sub allows 5 to 100).
    pub max_delivery_attempts: u32,
    /// Redelivery delay after a nack: exponential from `min_backoff_ms` to `max_backoff_ms`,
    /// like a Pub/Sub retry policy.
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Message bodies are appended to segment files beside the queue file
    /// (`<path>-bodies/`); a publisher starts a new one from this size, and a segment is
    /// deleted once every message in it is settled.
    pub segment_bytes: u64,
}

impl Default for EmbeddedQueueSettings {
    fn default() -> Self {
        Self {
            path: "data/queue.sqlite3".into(),
            ack_deadline_secs: 60,
            max_delivery_attempts: 5,
            min_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveBackend {
    #[default]
    Local,
    Gcs,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveSettings {
    pub backend: ArchiveBackend,
    pub local: LocalArchiveSettings,
    pub gcs: GcsSettings,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct GcsSettings {
    /// The archive bucket (required with `archive.backend = "gcs"`).
    pub bucket: String,
    /// Bucket location used by `provision`.
    pub location: Option<String>,
    /// `http://host:port` of an emulator; set from `STORAGE_EMULATOR_HOST` when empty.
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalArchiveSettings {
    /// The folder objects are written under, as `{source}/{YYYY-MM-DD}/...`.
    pub root: PathBuf,
}

impl Default for LocalArchiveSettings {
    fn default() -> Self {
        Self {
            root: "data/archive".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WarehouseBackend {
    #[default]
    Sqlite,
    Bigquery,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct WarehouseSettings {
    pub backend: WarehouseBackend,
    pub sqlite: SqliteWarehouseSettings,
    pub bigquery: BigQuerySettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BigQuerySettings {
    pub dataset: String,
    pub table: String,
    /// Dataset location used by `provision`.
    pub location: String,
    /// `http://host:port` of an emulator; set from `BIGQUERY_EMULATOR_HOST` when empty.
    pub endpoint: Option<String>,
}

impl Default for BigQuerySettings {
    fn default() -> Self {
        Self {
            dataset: "hookline".into(),
            table: "events".into(),
            location: "US".into(),
            endpoint: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteWarehouseSettings {
    /// The SQLite file holding the `events` table and its views.
    pub path: PathBuf,
}

impl Default for SqliteWarehouseSettings {
    fn default() -> Self {
        Self {
            path: "data/warehouse.sqlite3".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackSettings {
    /// Name of the environment variable holding the incoming-webhook URL. When it is unset,
    /// messages are logged instead of posted.
    pub webhook_url_env: String,
    /// Which events notify. Default: GitHub `issues` with action `opened`.
    pub notify: Vec<NotifyRule>,
    pub timeout_ms: u64,
    /// Least time between two posts from this worker: Slack's incoming webhooks take about
    /// one message per second per webhook and answer 429 beyond.
    pub min_interval_ms: u64,
    /// The longest a post waits for its turn in-process; a longer queue hands the message
    /// back to the queue (nack) so leases are not held for minutes.
    pub max_pacing_wait_ms: u64,
}

impl Default for SlackSettings {
    fn default() -> Self {
        Self {
            webhook_url_env: "SLACK_WEBHOOK_URL".into(),
            notify: vec![NotifyRule {
                provider: Some("github".into()),
                source: None,
                event: "issues".into(),
                actions: vec!["opened".into()],
            }],
            timeout_ms: 10_000,
            min_interval_ms: 1_000,
            max_pacing_wait_ms: 20_000,
        }
    }
}

/// A notification rule: every given field must match. `actions` empty means any action.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NotifyRule {
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    pub event: String,
    #[serde(default)]
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Messages processed at once (and so, at most, leased from the queue at once). High,
    /// because a message spends most of its time waiting on disks and networks.
    pub concurrency: usize,
    /// Bytes of message bodies processed at once: the worker's memory bound whatever the
    /// concurrency (Pub/Sub's flow control takes the same figure).
    pub max_in_flight_bytes: usize,
    /// How often an idle worker polls the embedded queue.
    pub poll_interval_ms: u64,
    /// In-process retries per sink before the message is handed back to the queue.
    pub sink_retries: usize,
    pub sink_retry_min_ms: u64,
    pub sink_retry_max_ms: u64,
    /// `pull`: stream from the subscription (Cloud Run: CPU always allocated, min instances
    /// >= 1). `push`: Pub/Sub pushes each message to `POST /pubsub/push`.
    pub mode: WorkerMode,
    pub push: PushSettings,
    /// The idempotency ledger's SQLite file, with the local archive. (With the Cloud Storage
    /// archive the ledger is objects under `_ledger/` in the bucket.)
    pub ledger_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMode {
    #[default]
    Pull,
    Push,
}

/// How push requests are authenticated: the OIDC token Pub/Sub attaches, signed by Google.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushSettings {
    /// The audience the push subscription puts in its tokens (the worker's URL).
    pub audience: String,
    /// The push service account; tokens for any other identity are refused.
    pub service_account_email: String,
    pub issuer: String,
    /// Where Google's signing keys are published (tests point it at a local key set).
    pub jwks_url: String,
    /// Off only for the Pub/Sub emulator, which attaches no token.
    pub verify_token: bool,
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            audience: String::new(),
            service_account_email: String::new(),
            issuer: "https://accounts.google.com".into(),
            jwks_url: "https://www.googleapis.com/oauth2/v3/certs".into(),
            verify_token: true,
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 128,
            max_in_flight_bytes: 64 * 1024 * 1024,
            poll_interval_ms: 50,
            sink_retries: 3,
            sink_retry_min_ms: 100,
            sink_retry_max_ms: 2_000,
            mode: WorkerMode::Pull,
            push: PushSettings::default(),
            ledger_path: "data/ledger.sqlite3".into(),
        }
    }
}

/// The provider kinds accepted in a source's `provider` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Github,
    Flexport,
    Shopify,
    Slack,
    Stripe,
    StandardWebhooks,
    SharedSecret,
    Hmac,
}

/// One webhook source as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSettings {
    pub provider: ProviderKind,
    /// Secrets written inline (fine for local development, not for production).
    #[serde(default)]
    pub secrets: Vec<SecretString>,
    /// Names of environment variables holding secrets, tried after `secrets`, in order.
    #[serde(default)]
    pub secrets_env: Vec<String>,
    /// `slack`, `stripe`, `standard_webhooks`, `hmac` with a timestamp: accepted clock
    /// difference in seconds, both ways (default 300).
    #[serde(default)]
    pub tolerance_secs: Option<i64>,
    /// `shared_secret`: the header carrying the secret; `hmac`: the signature header.
    #[serde(default)]
    pub header: Option<String>,
    /// `shared_secret`, `hmac`: a header holding the sender's delivery id.
    #[serde(default)]
    pub delivery_id_header: Option<String>,
    /// `shared_secret`, `hmac`: a header holding the event type.
    #[serde(default)]
    pub event_type_header: Option<String>,
    /// `hmac`: sha1, sha256 or sha512.
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    /// `hmac`: hex (default) or base64.
    #[serde(default)]
    pub encoding: Option<Encoding>,
    /// `hmac`: text before the signature, e.g. `sha256=`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `hmac`: accept the signature with or without `prefix`.
    #[serde(default)]
    pub prefix_optional: bool,
    /// `hmac`: a header holding a Unix timestamp that is signed with the body.
    #[serde(default)]
    pub timestamp_header: Option<String>,
    /// `hmac`: the signed content, e.g. `{timestamp}.{body}` (default `{body}`).
    #[serde(default)]
    pub signed_content: Option<String>,
}

/// A source ready to verify requests: its provider and resolved secrets.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub provider: Provider,
    pub secrets: Vec<SecretString>,
}

impl Settings {
    /// Loads the file at `path` (or `$HOOKLINE_CONFIG`, or `hookline.toml` if it exists)
    /// and applies the process environment.
    ///
    /// # Errors
    /// The file cannot be read or parsed, an override is malformed, or a value is invalid.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
            .or_else(|| Some(PathBuf::from("hookline.toml")).filter(|p| p.exists()));
        let text = match &path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_parts(&text, std::env::vars())
    }

    /// Builds settings from TOML text and an explicit environment, so tests need no
    /// process-wide `set_var`.
    ///
    /// # Errors
    /// As [`Self::load`].
    pub fn from_parts(
        toml_text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut tree: toml::Table = toml::from_str(toml_text).map_err(ConfigError::Parse)?;
        let mut port = None;
        let mut conventions = BTreeMap::new();
        for (key, value) in env {
            if key == "PORT" {
                port = Some(value);
            } else if let Some(path) = key.strip_prefix(ENV_PREFIX) {
                apply_override(&mut tree, &key, path, &value)?;
            } else if GOOGLE_CONVENTIONS.contains(&key.as_str()) && !value.is_empty() {
                conventions.insert(key, value);
            }
        }
        let mut settings: Settings = tree.try_into().map_err(ConfigError::Parse)?;
        settings.apply_google_conventions(&conventions);
        if let Some(port) = port {
            settings.server.port = port.parse().map_err(|_| ConfigError::Override {
                var: "PORT".into(),
                reason: format!("{port:?} is not a port number"),
            })?;
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Fills what Google's client libraries read from the environment, where the file left
    /// it empty: the project and the emulator hosts (`host:port` becomes `http://host:port`,
    /// the scheme the clients need).
    fn apply_google_conventions(&mut self, env: &BTreeMap<String, String>) {
        let endpoint = |var: &str| {
            env.get(var).map(|v| {
                if v.starts_with("http://") || v.starts_with("https://") {
                    v.trim_end_matches('/').to_owned()
                } else {
                    format!("http://{}", v.trim_end_matches('/'))
                }
            })
        };
        if self.gcp.project.is_empty()
            && let Some(p) = env.get("GOOGLE_CLOUD_PROJECT")
        {
            self.gcp.project = p.clone();
        }
        let q = &mut self.queue.pubsub;
        q.endpoint = q
            .endpoint
            .take()
            .or_else(|| endpoint("PUBSUB_EMULATOR_HOST"));
        let a = &mut self.archive.gcs;
        a.endpoint = a
            .endpoint
            .take()
            .or_else(|| endpoint("STORAGE_EMULATOR_HOST"));
        let w = &mut self.warehouse.bigquery;
        w.endpoint = w
            .endpoint
            .take()
            .or_else(|| endpoint("BIGQUERY_EMULATOR_HOST"));
    }

    /// Whether any engine is a Google Cloud one (and so needs `gcp.project`).
    pub fn uses_gcp(&self) -> bool {
        self.queue.backend == QueueBackend::Pubsub
            || self.archive.backend == ArchiveBackend::Gcs
            || self.warehouse.backend == WarehouseBackend::Bigquery
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: &str| Err(ConfigError::Invalid(msg.into()));
        if self.uses_gcp() && self.gcp.project.is_empty() {
            return invalid(
                "a Google Cloud engine is selected: set gcp.project (or GOOGLE_CLOUD_PROJECT)",
            );
        }
        if self.queue.backend == QueueBackend::Pubsub {
            let p = &self.queue.pubsub;
            if !(5..=100).contains(&p.max_delivery_attempts) {
                return invalid("queue.pubsub.max_delivery_attempts must be 5 to 100");
            }
            if !(10..=600).contains(&p.ack_deadline_secs)
                || p.min_backoff_secs > p.max_backoff_secs
                || p.max_backoff_secs > 600
            {
                return invalid(
                    "queue.pubsub: ack_deadline_secs 10..=600, min_backoff_secs <= max_backoff_secs <= 600",
                );
            }
            if !(1..=64).contains(&p.publish_lanes) {
                return invalid("queue.pubsub.publish_lanes must be 1 to 64");
            }
            for name in [
                &p.topic,
                &p.subscription,
                &p.dead_letter_topic,
                &p.dead_letter_subscription,
            ] {
                if name.len() < 3 {
                    return invalid(
                        "queue.pubsub: topic and subscription names need 3 or more characters",
                    );
                }
            }
            if self.archive.backend != ArchiveBackend::Gcs {
                return invalid(
                    "queue.backend = \"pubsub\" needs archive.backend = \"gcs\": bodies too large for a Pub/Sub message are stored there as claim checks",
                );
            }
        }
        if self.worker.mode == WorkerMode::Push {
            if self.queue.backend != QueueBackend::Pubsub {
                return invalid("worker.mode = \"push\" needs queue.backend = \"pubsub\"");
            }
            let p = &self.worker.push;
            if p.verify_token && (p.audience.is_empty() || p.service_account_email.is_empty()) {
                return invalid(
                    "worker.mode = \"push\" needs worker.push.audience and worker.push.service_account_email",
                );
            }
        }
        if self.archive.backend == ArchiveBackend::Gcs && self.archive.gcs.bucket.is_empty() {
            return invalid("archive.backend = \"gcs\" needs archive.gcs.bucket");
        }
        let q = &self.queue.embedded;
        if !(5..=100).contains(&q.max_delivery_attempts) {
            return invalid(
                "queue.embedded.max_delivery_attempts must be 5 to 100 (as in Pub/Sub)",
            );
        }
        if q.ack_deadline_secs == 0 || q.min_backoff_ms > q.max_backoff_ms {
            return invalid(
                "queue.embedded: ack_deadline_secs > 0 and min_backoff_ms <= max_backoff_ms",
            );
        }
        if q.segment_bytes == 0 {
            return invalid("queue.embedded.segment_bytes must be at least 1");
        }
        if self.worker.concurrency == 0 || self.worker.max_in_flight_bytes == 0 {
            return invalid("worker.concurrency and worker.max_in_flight_bytes must be at least 1");
        }
        if self.server.max_body_bytes == 0 || self.server.max_concurrent_requests == 0 {
            return invalid(
                "server.max_body_bytes and server.max_concurrent_requests must be at least 1",
            );
        }
        for name in self.sources.keys() {
            let ok = (1..=63).contains(&name.len())
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !ok {
                return Err(ConfigError::Source {
                    source_name: name.clone(),
                    reason: "names are 1-63 characters of a-z, 0-9, '-' and '_'".into(),
                });
            }
        }
        Ok(())
    }

    /// Builds every source's verifier and reads its secrets from the environment.
    ///
    /// # Errors
    /// A source names a missing environment variable, has no secret at all, or lacks a
    /// setting its provider needs.
    pub fn resolve_sources(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<BTreeMap<String, Source>, ConfigError> {
        self.sources
            .iter()
            .map(|(name, s)| {
                let err = |reason: String| ConfigError::Source {
                    source_name: name.clone(),
                    reason,
                };
                if s.secrets.iter().any(|x| x.expose_secret().is_empty()) {
                    return Err(err("an empty secret would let anything verify".into()));
                }
                let mut secrets = s.secrets.clone();
                for var in &s.secrets_env {
                    let value = env(var)
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| err(format!("environment variable {var} is not set")))?;
                    secrets.push(SecretString::from(value));
                }
                if secrets.is_empty() {
                    return Err(err("no secret: set `secrets_env` (or `secrets`)".into()));
                }
                let provider = build_provider(s).map_err(err)?;
                if s.provider == ProviderKind::StandardWebhooks {
                    for secret in &secrets {
                        standard_webhooks::key(secret.expose_secret()).map_err(err)?;
                    }
                }
                Ok((
                    name.clone(),
                    Source {
                        name: name.clone(),
                        provider,
                        secrets,
                    },
                ))
            })
            .collect()
    }
}

/// The verifier a source's settings describe.
fn build_provider(s: &SourceSettings) -> Result<Provider, String> {
    let tolerance_secs = s.tolerance_secs.unwrap_or(300);
    if tolerance_secs <= 0 {
        return Err("tolerance_secs must be positive".into());
    }
    let header = |kind: &str| {
        s.header
            .clone()
            .ok_or_else(|| format!("{kind} needs `header`"))
    };
    Ok(match s.provider {
        ProviderKind::Github => Provider::Github,
        ProviderKind::Flexport => Provider::Flexport,
        ProviderKind::Shopify => Provider::Shopify,
        ProviderKind::Slack => Provider::Slack { tolerance_secs },
        ProviderKind::Stripe => Provider::Stripe { tolerance_secs },
        ProviderKind::StandardWebhooks => Provider::StandardWebhooks { tolerance_secs },
        ProviderKind::SharedSecret => Provider::SharedSecret {
            header: header("shared_secret")?,
            delivery_id_header: s.delivery_id_header.clone(),
            event_type_header: s.event_type_header.clone(),
        },
        ProviderKind::Hmac => {
            let template = s.signed_content.as_deref().unwrap_or("{body}");
            let template = Template::parse(template).map_err(|e| e.to_string())?;
            let scheme = HmacScheme {
                header: header("hmac")?,
                algorithm: s
                    .algorithm
                    .ok_or("hmac needs `algorithm` (sha1, sha256 or sha512)")?,
                encoding: s.encoding.unwrap_or(Encoding::Hex),
                prefix: s.prefix.clone(),
                prefix_optional: s.prefix_optional,
                timestamp: s.timestamp_header.clone().map(|header| Timestamped {
                    header,
                    template,
                    tolerance_secs,
                }),
                name: "hmac",
            };
            if scheme.timestamp.is_none()
                && s.signed_content
                    .as_deref()
                    .is_some_and(|t| t.contains("{timestamp}"))
            {
                return Err(
                    "signed_content uses {timestamp} but no timestamp_header is set".into(),
                );
            }
            scheme.validate()?;
            Provider::Hmac {
                scheme,
                delivery_id_header: s.delivery_id_header.clone(),
                event_type_header: s.event_type_header.clone(),
            }
        }
    })
}

/// Sets `a.b.c` from `HOOKLINE__A__B__C`. The value is read as a TOML value when it is one
/// (`5`, `true`, `["A","B"]`) and as a string otherwise.
fn apply_override(
    tree: &mut toml::Table,
    var: &str,
    path: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
    if keys.iter().any(String::is_empty) {
        return Err(ConfigError::Override {
            var: var.into(),
            reason: "empty path segment".into(),
        });
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.into()));
    let (last, parents) = keys
        .split_last()
        .expect("split yields one segment at least");
    let mut table = tree;
    for key in parents {
        let entry = table
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| ConfigError::Override {
            var: var.into(),
            reason: format!("`{key}` is not a section"),
        })?;
    }
    table.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const FILE: &str = r#"
        [server]
        max_body_bytes = 1024
        [sources.gh]
        provider = "github"
        secrets_env = ["GH_SECRET", "GH_SECRET_OLD"]
        [sources.hook]
        provider = "shared_secret"
        header = "X-Token"
        secrets = ["inline"]
    "#;

    #[test]
    fn defaults_then_file_then_env_then_port() {
        let s = Settings::from_parts(
            FILE,
            env(&[
                ("HOOKLINE__SERVER__MAX_BODY_BYTES", "2048"),
                ("HOOKLINE__QUEUE__EMBEDDED__PATH", "/tmp/q.sqlite3"),
                ("PORT", "9999"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.server.max_body_bytes, 2048);
        assert_eq!(s.server.port, 9999);
        assert_eq!(s.server.publish_timeout_ms, 5_000);
        assert_eq!(s.queue.embedded.path, PathBuf::from("/tmp/q.sqlite3"));
        assert_eq!(s.slack.notify[0].event, "issues");
    }

    #[test]
    fn secrets_come_from_the_named_variables() {
        let s = Settings::from_parts(FILE, []).unwrap();
        let sources = s
            .resolve_sources(|v| match v {
                "GH_SECRET" => Some("new".into()),
                "GH_SECRET_OLD" => Some("old".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(sources["gh"].secrets.len(), 2);
        assert_eq!(sources["gh"].provider, Provider::Github);
        assert!(matches!(
            sources["hook"].provider,
            Provider::SharedSecret { .. }
        ));

        let err = s.resolve_sources(|_| None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "source `gh`: environment variable GH_SECRET is not set"
        );
    }

    #[test]
    fn mistakes_are_reported_not_ignored() {
        let typo = "[sources.gh]\nprovider = \"github\"\nsecret_env = [\"X\"]";
        assert!(matches!(
            Settings::from_parts(typo, []),
            Err(ConfigError::Parse(_))
        ));
        let bad_name = "[sources.\"Git Hub\"]\nprovider = \"github\"\nsecrets = [\"x\"]";
        assert!(matches!(
            Settings::from_parts(bad_name, []),
            Err(ConfigError::Source { .. })
        ));
        assert!(matches!(
            Settings::from_parts("", env(&[("PORT", "http")])),
            Err(ConfigError::Override { .. })
        ));
        let attempts = env(&[("HOOKLINE__QUEUE__EMBEDDED__MAX_DELIVERY_ATTEMPTS", "1")]);
        assert!(matches!(
            Settings::from_parts("", attempts),
            Err(ConfigError::Invalid(_))
        ));
        let no_lanes = "[gcp]\nproject = \"p\"\n[queue]\nbackend = \"pubsub\"\n[queue.pubsub]\npublish_lanes = 0";
        let err = Settings::from_parts(no_lanes, []).unwrap_err();
        assert!(err.to_string().contains("publish_lanes"), "{err}");
        let no_segment = "[queue.embedded]\nsegment_bytes = 0";
        let err = Settings::from_parts(no_segment, []).unwrap_err();
        assert!(err.to_string().contains("segment_bytes"), "{err}");
        let empty = "[sources.s]\nprovider = \"github\"\nsecrets = [\"\"]";
        let err = Settings::from_parts(empty, [])
            .unwrap()
            .resolve_sources(|_| None)
            .unwrap_err();
        assert!(err.to_string().contains("empty secret"), "{err}");
        let no_header = "[sources.s]\nprovider = \"shared_secret\"\nsecrets = [\"x\"]";
        let s = Settings::from_parts(no_header, []).unwrap();
        assert!(s.resolve_sources(|_| None).is_err());
    }

    #[test]
    fn google_conventions_fill_project_and_emulator_endpoints() {
        let file = "[queue]\nbackend = \"pubsub\"\n[archive]\nbackend = \"gcs\"\n[archive.gcs]\nbucket = \"b-archive\"\n[warehouse]\nbackend = \"bigquery\"";
        let s = Settings::from_parts(
            file,
            env(&[
                ("GOOGLE_CLOUD_PROJECT", "proj-1"),
                ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"),
                ("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443/"),
                ("BIGQUERY_EMULATOR_HOST", "localhost:9050"),
            ]),
        )
        .unwrap();
        assert_eq!(s.gcp.project, "proj-1");
        assert_eq!(
            s.queue.pubsub.endpoint.as_deref(),
            Some("http://127.0.0.1:8085")
        );
        assert_eq!(
            s.archive.gcs.endpoint.as_deref(),
            Some("http://127.0.0.1:4443")
        );
        assert_eq!(
            s.warehouse.bigquery.endpoint.as_deref(),
            Some("http://localhost:9050")
        );
        assert!(
            matches!(Settings::from_parts(file, []), Err(ConfigError::Invalid(m)) if m.contains("gcp.project"))
        );
        let local_archive = "[gcp]\nproject = \"p-1\"\n[queue]\nbackend = \"pubsub\"";
        assert!(
            matches!(Settings::from_parts(local_archive, []), Err(ConfigError::Invalid(m)) if m.contains("claim checks"))
        );
    }

    #[test]
    fn generic_hmac_and_new_kinds_are_configured_and_checked() {
        let file = r#"
            [sources.vendor]
            provider = "hmac"
            header = "X-Vendor-Signature"
            algorithm = "sha512"
            encoding = "base64"
            prefix = "sha512="
            timestamp_header = "X-Vendor-Timestamp"
            signed_content = "{timestamp}.{body}"
            tolerance_secs = 60
            delivery_id_header = "X-Vendor-Id"
            secrets = ["k"]
            [sources.stripe]
            provider = "stripe"
            secrets = ["whsec_abc"]
            [sources.svix]
            provider = "standard_webhooks"
            secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
        "#;
        let sources = Settings::from_parts(file, [])
            .unwrap()
            .resolve_sources(|_| None)
            .unwrap();
        match &sources["vendor"].provider {
            Provider::Hmac {
                scheme,
                delivery_id_header,
                ..
            } => {
                assert_eq!(scheme.algorithm, Algorithm::Sha512);
                assert_eq!(scheme.timestamp.as_ref().unwrap().tolerance_secs, 60);
                assert_eq!(delivery_id_header.as_deref(), Some("X-Vendor-Id"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            sources["stripe"].provider,
            Provider::Stripe {
                tolerance_secs: 300
            }
        );

        let broken = [
            ("provider = \"hmac\"\nheader = \"X\"", "algorithm"),
            ("provider = \"hmac\"\nalgorithm = \"sha256\"", "header"),
            (
                "provider = \"hmac\"\nheader = \"X\"\nalgorithm = \"sha256\"\nsigned_content = \"{timestamp}.{body}\"",
                "timestamp_header",
            ),
            (
                "provider = \"hmac\"\nheader = \"X\"\nalgorithm = \"sha256\"\nsigned_content = \"{nonce}\"",
                "template",
            ),
            ("provider = \"stripe\"\ntolerance_secs = 0", "positive"),
        ];
        for (source, needle) in broken {
            let file = format!("[sources.s]\n{source}\nsecrets = [\"k\"]");
            let err = Settings::from_parts(&file, [])
                .unwrap()
                .resolve_sources(|_| None)
                .unwrap_err();
            assert!(err.to_string().contains(needle), "{source}: {err}");
        }
        let bad_key =
            "[sources.s]\nprovider = \"standard_webhooks\"\nsecrets = [\"whsec_not base64!\"]";
        let err = Settings::from_parts(bad_key, [])
            .unwrap()
            .resolve_sources(|_| None)
            .unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
        assert!(
            !err.to_string().contains("not base64!"),
            "secrets never appear in errors"
        );
        // Base64, but a key anyone could compute signatures with (empty) or guess.
        for short in ["whsec_", "whsec_AA==", "whsec_c2hvcnQtMTYtYnl0ZXMhIQ=="] {
            let file =
                format!("[sources.s]\nprovider = \"standard_webhooks\"\nsecrets = [\"{short}\"]");
            let err = Settings::from_parts(&file, [])
                .unwrap()
                .resolve_sources(|_| None)
                .unwrap_err();
            assert!(
                err.to_string().contains("at least 24 are needed"),
                "{short}: {err}"
            );
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = Settings::from_parts(FILE, []).unwrap();
        assert!(!format!("{s:?}").contains("inline"));
    }
}
