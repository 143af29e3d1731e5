//! Starting ingest and worker in-process on random ports and temporary folders, signing
//! requests as providers do, and reading back every sink.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hookline_ingest::AppState;
use hookline_shared::config::Settings;
use hookline_shared::queue::Publisher;
use hookline_shared::queue::embedded::{EmbeddedQueue, MAIN_TOPIC};
use hookline_worker::Pipeline;
use secrecy::SecretString;
use tokio::sync::oneshot;

pub const GITHUB_SECRET: &str = "gh-test-secret";
pub const SLACK_SECRET: &str = "slack-signing-secret";
pub const ISSUES_OPENED: &str = include_str!("../../examples/payloads/github-issues-opened.json");

/// A temporary home: configuration, queue, archive and warehouse all live under it.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub settings: Settings,
}

impl TestEnv {
    pub fn new() -> Self {
        Self::with_extra("")
    }

    /// `extra` is appended to the TOML, for tests that need other limits.
    pub fn with_extra(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let toml = config_toml(dir.path(), extra);
        let settings = Settings::from_parts(&toml, []).unwrap();
        Self { dir, settings }
    }

    pub fn config_path(&self) -> PathBuf {
        let path = self.dir.path().join("hookline.toml");
        std::fs::write(&path, config_toml(self.dir.path(), "")).unwrap();
        path
    }

    pub fn queue(&self) -> EmbeddedQueue {
        EmbeddedQueue::open(&self.settings.queue.embedded, Duration::from_millis(10)).unwrap()
    }

    pub fn archive_root(&self) -> PathBuf {
        self.settings.archive.local.root.clone()
    }

    /// Every archived object, as (relative name, bytes).
    pub fn archived(&self) -> Vec<(String, Vec<u8>)> {
        let root = self.archive_root();
        let mut out = Vec::new();
        walk(&root, &root, &mut out);
        out.sort();
        out
    }

    /// Runs a query against the warehouse file and returns the rows as strings.
    pub fn warehouse(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let path = &self.settings.warehouse.sqlite.path;
        if !path.exists() {
            return Vec::new();
        }
        let conn = rusqlite::Connection::open(path).unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| {
            (0..n)
                .map(|i| {
                    let v: rusqlite::types::Value = r.get(i)?;
                    Ok(match v {
                        rusqlite::types::Value::Null => None,
                        rusqlite::types::Value::Integer(i) => Some(i.to_string()),
                        rusqlite::types::Value::Real(f) => Some(f.to_string()),
                        rusqlite::types::Value::Text(t) => Some(t),
                        rusqlite::types::Value::Blob(b) => Some(format!("{b:?}")),
                    })
                })
                .collect()
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    pub fn row_count(&self) -> usize {
        self.warehouse("SELECT count(*) FROM events")
            .first()
            .and_then(|r| r[0].as_ref())
            .map_or(0, |c| c.parse().unwrap())
    }

    pub async fn queue_depth(&self) -> (i64, i64) {
        self.queue().depth(MAIN_TOPIC).await.unwrap()
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            let name = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.push((name, std::fs::read(&p).unwrap()));
        }
    }
}

pub fn config_toml(dir: &Path, extra: &str) -> String {
    let d = dir.display();
    format!(
        r#"
[server]
host = "127.0.0.1"
publish_timeout_ms = 2000
[queue.embedded]
path = "{d}/queue.sqlite3"
ack_deadline_secs = 10
min_backoff_ms = 50
max_backoff_ms = 200
[archive.local]
root = "{d}/archive"
[warehouse.sqlite]
path = "{d}/warehouse.sqlite3"
[worker]
ledger_path = "{d}/ledger.sqlite3"
poll_interval_ms = 10
sink_retry_min_ms = 10
sink_retry_max_ms = 50
[slack]
webhook_url_env = "HOOKLINE_TEST_SLACK_URL"
[sources.gh]
provider = "github"
secrets = ["old-secret", "{GITHUB_SECRET}"]
[sources.slack-events]
provider = "slack"
secrets = ["{SLACK_SECRET}"]
{extra}
"#
    )
}

/// A running in-process ingest.
pub struct Ingest {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Ingest {
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

pub async fn spawn_ingest(env: &TestEnv, publisher: Arc<dyn Publisher>) -> Ingest {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let sources = env.settings.resolve_sources(|_| None).unwrap();
    let state = AppState::new(sources, publisher, env.settings.server.clone());
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(hookline_ingest::run(listener, state, 1, async {
        let _ = rx.await;
    }));
    Ingest {
        url,
        stop: Some(tx),
        task,
    }
}

/// A running in-process worker.
pub struct Worker {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

pub async fn spawn_worker(
    env: &TestEnv,
    queue: &EmbeddedQueue,
    slack_url: Option<String>,
) -> Worker {
    let pipeline = Pipeline::from_settings(&env.settings, slack_url.map(SecretString::from))
        .await
        .unwrap();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(hookline_worker::runner::run(
        Arc::new(queue.subscriber()),
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
    Worker {
        stop: Some(tx),
        task,
    }
}

#[path = "../fixtures/http.rs"]
pub mod http;
pub use http::{github_headers, post, wait_for};

#[path = "../fixtures/slack.rs"]
mod slack_fixture;
pub use slack_fixture::expected_slack_json;
