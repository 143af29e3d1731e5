//! The fault suite: the proof of "never lose, never double" on the embedded engine.
//!
//! `ingest` and `worker` run as real processes; a sender posts correctly signed webhooks
//! (10% GitHub `issues` `opened`, so Slack is exercised, 2% of them poison) and, like a
//! provider, resends anything that got no 200 — and 5% again after a 200, as GitHub's
//! "Redeliver" does (same delivery id, a new request). Meanwhile: the worker is SIGKILLed and
//! restarted every few seconds; the fake Slack answers 500, then 429 with Retry-After; the
//! archive folder disappears and comes back; the warehouse is held locked; ingest is
//! SIGKILLed mid-load and restarted. Poison messages (Slack refuses them) are dead-lettered,
//! then replayed with `hookline replay` once Slack is "fixed". At the end, by delivery id:
//! every 200'd delivery has exactly one archive object and one warehouse row, every
//! `issues` delivery one Slack post or more (more only in the documented crash window).
//!
//! Size: `HOOKLINE_FAULTS_COUNT` deliveries (default 300), `HOOKLINE_FAULTS_PHASE_SECS` per
//! storage/warehouse fault and `HOOKLINE_FAULTS_SLACK_SECS` per Slack phase (default 2 each).
//! The full run: `scripts/faults.sh` (10,000 deliveries, 15 s outages, 30 s Slack phases).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookline_shared::config::Settings;
use hookline_shared::queue::embedded::{DEAD_LETTER_TOPIC, EmbeddedQueue, MAIN_TOPIC};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

#[path = "../fixtures/http.rs"]
#[allow(dead_code)] // this binary only signs and picks ports
mod http;

use http::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_hookline");
const SECRET: &str = "faults-secret";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Slack that fails on command, refuses poison while it is "broken", and counts posts by
/// delivery id (the issue title carries it).
#[derive(Clone, Default)]
struct FakeSlack {
    /// 0 ok, 1 answer 500, 2 answer 429.
    mode: Arc<AtomicU8>,
    refuse_poison: Arc<AtomicBool>,
    posts: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Respond for FakeSlack {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let json: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let text = json["text"].as_str().unwrap_or_default().to_owned();
        match self.mode.load(Ordering::SeqCst) {
            1 => return ResponseTemplate::new(500).set_body_string("internal_error"),
            2 => {
                return ResponseTemplate::new(429)
                    .insert_header("Retry-After", "1")
                    .set_body_string("rate_limited");
            }
            _ => {}
        }
        if text.contains("POISON") && self.refuse_poison.load(Ordering::SeqCst) {
            return ResponseTemplate::new(400).set_body_string("invalid_blocks");
        }
        let id = text
            .split_whitespace()
            .find(|w| w.starts_with("f-"))
            .unwrap_or("?")
            .to_owned();
        *self.posts.lock().unwrap().entry(id).or_default() += 1;
        ResponseTemplate::new(200).set_body_string("ok")
    }
}

struct Stack {
    dir: tempfile::TempDir,
    config: PathBuf,
    settings: Settings,
    ingest_port: u16,
    slack_url: String,
}

impl Stack {
    fn spawn(&self, service: &str, port: u16, run: u32) -> Child {
        spawn_service(
            &self.config,
            self.dir.path(),
            &self.slack_url,
            service,
            port,
            run,
        )
    }

    fn archive(&self) -> PathBuf {
        self.settings.archive.local.root.clone()
    }
}

/// Starts `hookline SERVICE` on `port`, its log in `dir/SERVICE-RUN.log`.
fn spawn_service(
    config: &Path,
    dir: &Path,
    slack_url: &str,
    service: &str,
    port: u16,
    run: u32,
) -> Child {
    let log = std::fs::File::create(dir.join(format!("{service}-{run}.log"))).unwrap();
    Command::new(BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "--log-format",
            "json",
            service,
        ])
        .env("PORT", port.to_string())
        .env("FAULTS_SLACK_URL", slack_url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn kill9(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn body(i: usize) -> (Vec<u8>, &'static str) {
    let id = format!("f-{i:06}");
    if i.is_multiple_of(10) {
        let poison = if i.is_multiple_of(50) { " POISON" } else { "" };
        let json = serde_json::json!({
            "action": "opened",
            "issue": { "number": i, "title": format!("{id}{poison}"), "html_url": format!("https://github.com/o/r/issues/{i}"),
                       "user": { "login": "octo", "html_url": "https://github.com/octo" } },
            "repository": { "full_name": "o/r", "html_url": "https://github.com/o/r" },
        });
        (serde_json::to_vec(&json).unwrap(), "issues")
    } else {
        let json = serde_json::json!({ "ref": "refs/heads/main", "after": id, "padding": "p".repeat(900) });
        (serde_json::to_vec(&json).unwrap(), "push")
    }
}

/// Posts every delivery until it gets a 200 (a provider retries); returns those that did.
async fn send_all(port: u16, count: usize) -> BTreeSet<String> {
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (acked, next, client) = (Arc::clone(&acked), Arc::clone(&next), client.clone());
        senders.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= count {
                    return;
                }
                let (payload, event) = body(i);
                let id = format!("f-{i:06}");
                let mut resent = false;
                for _ in 0..300 {
                    let mut req = client
                        .post(format!("http://127.0.0.1:{port}/hooks/gh"))
                        .body(payload.clone());
                    for (k, v) in http::github_headers(SECRET, &payload, event, &id) {
                        req = req.header(k, v);
                    }
                    if req.send().await.is_ok_and(|r| r.status() == 200) {
                        acked.lock().unwrap().insert(id.clone());
                        // Like GitHub's "Redeliver": 5% are sent again later, same id.
                        if i % 20 == 5 && !resent {
                            resent = true;
                            tokio::time::sleep(Duration::from_millis(1100)).await;
                            continue;
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
    while senders.join_next().await.is_some() {}
    acked.lock().unwrap().clone()
}

fn count_by_id(names: impl Iterator<Item = String>) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for n in names {
        if let Some(id) = n.rsplit('_').next().filter(|id| id.starts_with("f-")) {
            *out.entry(id.to_owned()).or_default() += 1;
        }
    }
    out
}

fn archived(root: &Path) -> BTreeMap<String, u32> {
    let mut names = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if !name.starts_with(".tmp-") {
                names.push(name);
            }
        }
    }
    count_by_id(names.into_iter())
}

async fn queue_empty(queue: &EmbeddedQueue, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if queue.depth(MAIN_TOPIC).await.unwrap() == (0, 0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_lose_never_double_under_faults() {
    let count = env_num("HOOKLINE_FAULTS_COUNT", 300) as usize;
    let phase = Duration::from_secs(env_num("HOOKLINE_FAULTS_PHASE_SECS", 2));
    let slack_phase = Duration::from_secs(env_num("HOOKLINE_FAULTS_SLACK_SECS", phase.as_secs()));
    let slack = MockServer::start().await;
    let fake = FakeSlack::default();
    fake.refuse_poison.store(true, Ordering::SeqCst);
    Mock::given(method("POST"))
        .respond_with(fake.clone())
        .mount(&slack)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let toml = format!(
        r#"
[server]
host = "127.0.0.1"
[queue.embedded]
path = "{d}/queue.sqlite3"
ack_deadline_secs = 5
max_delivery_attempts = 10
min_backoff_ms = 500
max_backoff_ms = 8000
[archive.local]
root = "{d}/archive"
[warehouse.sqlite]
path = "{d}/warehouse.sqlite3"
[worker]
ledger_path = "{d}/ledger.sqlite3"
poll_interval_ms = 20
sink_retry_min_ms = 50
sink_retry_max_ms = 500
[slack]
webhook_url_env = "FAULTS_SLACK_URL"
# The fake Slack has no rate limit; pacing is tested on its own (slack::pacer). At Slack's
# one post a second, 1,000 `issues` deliveries would take the full run 17 minutes.
min_interval_ms = 5
[sources.gh]
provider = "github"
secrets = ["{SECRET}"]
"#
    );
    let config = dir.path().join("hookline.toml");
    std::fs::write(&config, &toml).unwrap();
    let settings = Settings::from_parts(&toml, []).unwrap();
    let stack = Stack {
        config,
        settings,
        ingest_port: free_port(),
        slack_url: format!("{}/hook", slack.uri()),
        dir,
    };
    let worker_port = free_port();
    let queue =
        EmbeddedQueue::open(&stack.settings.queue.embedded, Duration::from_millis(20)).unwrap();

    let mut runs = 0;
    let ingest = Arc::new(Mutex::new(Some(stack.spawn(
        "ingest",
        stack.ingest_port,
        runs,
    ))));
    let worker = Arc::new(Mutex::new(Some(stack.spawn("worker", worker_port, runs))));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sending = tokio::spawn(send_all(stack.ingest_port, count));
    let started = Instant::now();

    // Faults, one after another, while the load runs; the worker is also killed between them.
    let stop_killing = Arc::new(AtomicBool::new(false));
    let killer = {
        let (worker, stop, stack_cfg, dir) = (
            Arc::clone(&worker),
            Arc::clone(&stop_killing),
            stack.config.clone(),
            stack.dir.path().to_path_buf(),
        );
        let slack_url = stack.slack_url.clone();
        tokio::spawn(async move {
            let mut n = 100;
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                if let Some(child) = worker.lock().unwrap().take() {
                    kill9(child);
                }
                n += 1;
                let child = spawn_service(&stack_cfg, &dir, &slack_url, "worker", worker_port, n);
                *worker.lock().unwrap() = Some(child);
            }
        })
    };
    // Slack: 500, then 429 with Retry-After.
    fake.mode.store(1, Ordering::SeqCst);
    tokio::time::sleep(slack_phase).await;
    fake.mode.store(2, Ordering::SeqCst);
    tokio::time::sleep(slack_phase).await;
    fake.mode.store(0, Ordering::SeqCst);
    // The archive folder is gone (a file stands in its place), then comes back.
    let root = stack.archive();
    let away = root.with_extension("away");
    let _ = std::fs::create_dir_all(&root);
    std::fs::rename(&root, &away).unwrap();
    std::fs::write(&root, b"not a folder").unwrap();
    tokio::time::sleep(phase).await;
    std::fs::remove_file(&root).unwrap();
    std::fs::rename(&away, &root).unwrap();
    // The warehouse is locked.
    let lock_path = stack.settings.warehouse.sqlite.path.clone();
    let locker = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(lock_path).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        std::thread::sleep(phase);
        conn.execute_batch("COMMIT").unwrap();
    });
    tokio::time::sleep(phase).await;
    locker.join().unwrap();
    // Ingest is killed mid-load and restarted.
    if let Some(child) = ingest.lock().unwrap().take() {
        kill9(child);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    runs += 1;
    *ingest.lock().unwrap() = Some(stack.spawn("ingest", stack.ingest_port, runs));

    let acked = sending.await.unwrap();
    stop_killing.store(true, Ordering::SeqCst);
    killer.await.unwrap();
    let drained = queue_empty(&queue, Duration::from_secs(180)).await;

    // "Fix" Slack and replay what was dead-lettered.
    fake.refuse_poison.store(false, Ordering::SeqCst);
    let dead_before = queue.depth(DEAD_LETTER_TOPIC).await.unwrap();
    let out = Command::new(BIN)
        .args([
            "--config",
            stack.config.to_str().unwrap(),
            "replay",
            "--idle-secs",
            "2",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let replayed: u64 = report
        .split_whitespace()
        .find_map(|w| w.strip_prefix("replayed="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let drained_after_replay = queue_empty(&queue, Duration::from_secs(120)).await;
    let dead_after = queue.depth(DEAD_LETTER_TOPIC).await.unwrap();

    if let Some(w) = worker.lock().unwrap().take() {
        terminate(w);
    }
    if let Some(i) = ingest.lock().unwrap().take() {
        terminate(i);
    }

    let objects = archived(&root);
    let conn = rusqlite::Connection::open(&stack.settings.warehouse.sqlite.path).unwrap();
    let rows: BTreeMap<String, u32> = conn
        .prepare("SELECT id, count(*) FROM events GROUP BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let posts = fake.posts.lock().unwrap().clone();
    let issues: Vec<&String> = acked
        .iter()
        .filter(|id| id[2..].parse::<usize>().is_ok_and(|i| i.is_multiple_of(10)))
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !objects.contains_key(*id) || !rows.contains_key(*id))
        .collect();
    let dup_archive = objects.values().filter(|n| **n > 1).count();
    let dup_rows = rows.values().filter(|n| **n > 1).count();
    let dup_slack = posts.values().filter(|n| **n > 1).count();
    let missed_slack: Vec<&&String> = issues
        .iter()
        .filter(|id| !posts.contains_key(id.as_str()))
        .collect();
    println!(
        "sent={count} acked={} lost={} dup_archive={dup_archive} dup_rows={dup_rows} dup_slack={dup_slack} \
         missed_slack={} dead={} replayed={replayed} seconds={}",
        acked.len(),
        lost.len(),
        missed_slack.len(),
        dead_before.0 + dead_before.1,
        started.elapsed().as_secs()
    );
    assert!(
        drained && drained_after_replay,
        "the queue did not drain (logs in {})",
        stack.dir.path().display()
    );
    assert_eq!(acked.len(), count, "every delivery eventually got a 200");
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert_eq!(
        (dup_archive, dup_rows),
        (0, 0),
        "duplicate archive objects or rows"
    );
    assert!(
        missed_slack.is_empty(),
        "missed Slack posts: {missed_slack:?}"
    );
    assert_eq!(
        dead_after,
        (0, 0),
        "every dead letter was replayed: {report}"
    );
    assert!(
        replayed >= (count as u64).div_ceil(50),
        "the poison messages were dead-lettered and replayed: {report}"
    );
}
