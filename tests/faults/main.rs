//! The fault suite: the proof of "never lose, never double", on each engine.
//!
//! `ingest` and `worker` run as real processes; a sender posts correctly signed webhooks
//! (10% GitHub `issues` `opened`, so Slack is exercised, 2% of them poison) and, like a
//! provider, resends anything that got no 200 — and 5% again after a 200, as GitHub's
//! "Redeliver" does (same delivery id, a new request). Meanwhile: the worker is SIGKILLed and
//! restarted every few seconds (when the queue is the embedded one); the fake Slack answers 500, then 429 with
//! Retry-After; the archive goes away and comes back; so does the warehouse; ingest is
//! SIGKILLed mid-load and restarted. Poison messages (Slack refuses them) are dead-lettered, then replayed
//! with `hookline replay` once Slack is "fixed". At the end, by delivery id: every 200'd
//! delivery has exactly one archive object and one warehouse row, every `issues` delivery
//! one Slack post or more (more only in the documented crash window).
//!
//! - Embedded engine: the archive folder is replaced by a file, the warehouse file is held
//!   locked (`BEGIN EXCLUSIVE`).
//! - Google Cloud engines: the Pub/Sub emulator (shared, from `scripts/emulators.sh`)
//!   carries the queue and redelivers what the worker nacks or held when it was killed;
//!   this test starts its own fake-gcs-server and bqemulator: bqemulator (file-backed) is
//!   SIGKILLed for its outage and started again on the same port and data, fake-gcs-server
//!   (in memory) is frozen (SIGSTOP, then SIGCONT; killing its filesystem backend tears
//!   objects, and that backend reads every object of the bucket for each listing, which
//!   made a 10,000-delivery run crawl).
//!   Two emulator bugs shape this run (see `gcp_never_loses_never_doubles_under_faults`):
//!   the worker is not killed, because the emulator keeps pushing messages to the streams
//!   of killed clients, and the subscription has no retry policy, because the emulator's
//!   retry-policy path can stop redelivering for good. A second run SIGKILLs the worker
//!   against the same two emulators with the embedded queue.
//!
//! Size: `HOOKLINE_FAULTS_COUNT` deliveries (default 300 embedded, 200 Google Cloud),
//! `HOOKLINE_FAULTS_PHASE_SECS` per storage/warehouse fault and `HOOKLINE_FAULTS_SLACK_SECS`
//! per Slack phase (default 2 each). The full runs: `scripts/faults.sh` (10,000 deliveries,
//! 15 s outages, 30 s Slack phases) and `scripts/faults.sh gcp`. To diagnose a run:
//! `HOOKLINE_FAULTS_KEEP=1` keeps its directory (services' logs, data; a failed run keeps it
//! anyway and prints where), and
//! `HOOKLINE_FAULTS_LOG=info` logs every message settled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookline_shared::config::Settings;
use hookline_shared::queue::embedded::{DEAD_LETTER_TOPIC, EmbeddedQueue, MAIN_TOPIC};
use hookline_worker::sinks::archive_gcs::GcsArchive;
use hookline_worker::sinks::warehouse_bigquery::BigQueryWarehouse;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

#[path = "../fixtures/http.rs"]
#[allow(dead_code)] // this binary only signs and picks ports
mod http;

use http::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_hookline");
const SECRET: &str = "faults-secret";
const PROJECT: &str = "hookline-test";
/// How long a run may go without progress (fewer deliveries outstanding, or fewer messages in
/// the embedded queue) before it fails. Waiting on progress rather than for a fixed time
/// gives a large run on slow emulators (a few deliveries/s at the end of a 10,000-delivery
/// run) the time it needs, while a stuck run still stops.
const NO_PROGRESS: Duration = Duration::from_secs(300);
/// Replays of the dead-letter side before a run fails.
const REPLAY_ROUNDS: u32 = 20;
/// After a replay, how long the Slack posts still missing may stay as many before the
/// dead-letter side is replayed again.
const REPLAY_STALL: Duration = Duration::from_secs(60);

/// The two runs share the machine's two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The services' log filter: `warn`, or `HOOKLINE_FAULTS_LOG` (e.g. `info`, which logs every
/// message settled, with its message id and delivery attempt) when a run is being diagnosed.
fn log_filter() -> String {
    std::env::var("HOOKLINE_FAULTS_LOG").unwrap_or_else(|_| "warn".into())
}

/// A variable the Google Cloud run needs, or a failure saying how to get it.
fn required_env(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "the Google Cloud fault suite needs {name}: start the emulators with \
             `scripts/emulators.sh start && source target/emulators/env`, or run `scripts/test.sh`"
            )
        })
}

/// Slack that fails on command, refuses poison while it is "broken", and counts posts by
/// delivery id (the issue title carries it).
#[derive(Clone, Default)]
struct FakeSlack {
    /// 0 ok, 1 answer 500, 2 answer 429.
    mode: Arc<AtomicU8>,
    refuse_poison: Arc<AtomicBool>,
    posts: Arc<Mutex<BTreeMap<String, u32>>>,
    /// Poison deliveries refused at least once.
    refused: Arc<Mutex<BTreeSet<String>>>,
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
        let id = text
            .split_whitespace()
            .find(|w| w.starts_with("f-"))
            .unwrap_or("?")
            .to_owned();
        if text.contains("POISON") && self.refuse_poison.load(Ordering::SeqCst) {
            self.refused.lock().unwrap().insert(id);
            return ResponseTemplate::new(400).set_body_string("invalid_blocks");
        }
        *self.posts.lock().unwrap().entry(id).or_default() += 1;
        ResponseTemplate::new(200).set_body_string("ok")
    }
}

/// Where the services' processes come from and what they are told.
struct Stack {
    /// Logs and data; kept after the run when `HOOKLINE_FAULTS_KEEP` is set or the run fails.
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    config: PathBuf,
    settings: Settings,
    ingest_port: u16,
    /// Environment for every hookline process (the Slack URL, emulator endpoints).
    env: Vec<(String, String)>,
}

impl Stack {
    fn new(dir: tempfile::TempDir, toml: &str, env: Vec<(String, String)>) -> Self {
        let config = dir.path().join("hookline.toml");
        std::fs::write(&config, toml).unwrap();
        let settings = Settings::from_parts(toml, env.clone()).unwrap();
        Self {
            path: dir.path().to_path_buf(),
            dir: if std::env::var_os("HOOKLINE_FAULTS_KEEP").is_some() {
                let _ = dir.keep();
                None
            } else {
                Some(dir)
            },
            config,
            settings,
            ingest_port: free_port(),
            env,
        }
    }

    /// Starts `hookline SERVICE` on `port`, its log in `dir/SERVICE-RUN.log`.
    fn spawn(&self, service: &str, port: u16, run: u32) -> Child {
        self.command(&[service], &format!("{service}-{run}"))
            .env("PORT", port.to_string())
            .spawn()
            .unwrap()
    }

    /// `hookline ARGS` with this stack's configuration and environment.
    fn command(&self, args: &[&str], log: &str) -> Command {
        let log = std::fs::File::create(self.path.join(format!("{log}.log"))).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args([
            "--config",
            self.config.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .args(args)
        .envs(self.env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", log_filter())
        .stdout(Stdio::null())
        .stderr(log);
        cmd
    }

    /// Runs `hookline provision` (topics, bucket, dataset) or fails the test.
    fn provision(&self) {
        let provisioned = self.command(&["provision"], "provision").status().unwrap();
        assert!(
            provisioned.success(),
            "provision failed (log in {})",
            self.path.display()
        );
    }

    /// Runs `hookline replay` once; returns how many it replayed.
    fn replay(&self, round: u32) -> u64 {
        let out = self
            .command(&["replay", "--idle-secs", "3"], &format!("replay-{round}"))
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find_map(|w| w.strip_prefix("replayed="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Stack {
    /// A failed run keeps its logs: the failure message names the directory.
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("logs kept in {}", dir.keep().display());
        }
    }
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

/// Kills the services left running when a run fails half-way, so a failed test leaves no
/// processes behind.
struct Reaper(Vec<Arc<Mutex<Option<Child>>>>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for slot in &self.0 {
            if let Some(child) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                kill9(child);
            }
        }
    }
}

/// An emulator process this test owns, so it can take it away and bring it back.
struct Emulator {
    name: &'static str,
    program: String,
    args: Vec<String>,
    ready_url: String,
    log_dir: PathBuf,
    child: Option<Child>,
    runs: u32,
}

impl Emulator {
    async fn start(&mut self) {
        self.runs += 1;
        let log = std::fs::File::create(
            self.log_dir
                .join(format!("{}-{}.log", self.name, self.runs)),
        )
        .unwrap();
        let child = Command::new(&self.program)
            .args(&self.args)
            // bqemulator would fetch a format extension at boot; this machine is offline.
            .env("BQEMU_ENABLE_FORMAT_EXTENSIONS", "false")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.program));
        self.child = Some(child);
        let client = reqwest::Client::new();
        let ready = http::wait_for(Duration::from_secs(90), async || {
            client
                .get(&self.ready_url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(
            ready,
            "{} did not come up (logs in {})",
            self.name,
            self.log_dir.display()
        );
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("the emulator is running").id();
        let sent = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name} {pid}");
    }

    fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            kill9(child);
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What differs between engines: the queue (how the end is told), the sinks (the two
/// outages, and how results are read).
struct Engine {
    /// The embedded queue, read to tell when it is empty; `None`: Pub/Sub.
    queue: Option<EmbeddedQueue>,
    sinks: Sinks,
}

enum Sinks {
    /// The archive folder and the SQLite warehouse.
    Local,
    /// fake-gcs-server and bqemulator, owned by the test.
    Gcp {
        gcs: Box<Emulator>,
        bigquery: Box<Emulator>,
    },
}

impl Engine {
    /// The archive is unavailable for `phase`.
    async fn archive_outage(&mut self, stack: &Stack, phase: Duration) {
        match &mut self.sinks {
            Sinks::Local => {
                // The folder is gone (a file stands in its place), then comes back.
                let root = stack.settings.archive.local.root.clone();
                let away = root.with_extension("away");
                let _ = std::fs::create_dir_all(&root);
                std::fs::rename(&root, &away).unwrap();
                std::fs::write(&root, b"not a folder").unwrap();
                tokio::time::sleep(phase).await;
                std::fs::remove_file(&root).unwrap();
                std::fs::rename(&away, &root).unwrap();
            }
            Sinks::Gcp { gcs, .. } => {
                // Frozen, not killed: killed, the memory backend would forget everything, and
                // the filesystem backend tears the object it is writing and then answers 404
                // for listings under it for ever (found by this suite). SIGSTOP: every
                // request hangs until SIGCONT or the client's timeout.
                gcs.signal("STOP");
                tokio::time::sleep(phase).await;
                gcs.signal("CONT");
            }
        }
    }

    /// The warehouse is unavailable for `phase`.
    async fn warehouse_outage(&mut self, stack: &Stack, phase: Duration) {
        match &mut self.sinks {
            Sinks::Local => {
                let lock_path = stack.settings.warehouse.sqlite.path.clone();
                let locker = std::thread::spawn(move || {
                    let conn = rusqlite::Connection::open(lock_path).unwrap();
                    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
                    std::thread::sleep(phase);
                    conn.execute_batch("COMMIT").unwrap();
                });
                tokio::time::sleep(phase).await;
                locker.join().unwrap();
            }
            Sinks::Gcp { bigquery, .. } => {
                bigquery.kill();
                tokio::time::sleep(phase).await;
                bigquery.start().await;
            }
        }
    }

    /// Archive objects per delivery id.
    async fn objects(&self, stack: &Stack) -> BTreeMap<String, u32> {
        match self.sinks {
            Sinks::Local => archived(&stack.settings.archive.local.root),
            Sinks::Gcp { .. } => {
                let gcs = GcsArchive::connect(&stack.settings.archive.gcs)
                    .await
                    .unwrap();
                let names = gcs.list("gh/").await.unwrap_or_default();
                count_by_id(names.into_iter())
            }
        }
    }

    /// Warehouse rows per delivery id.
    async fn rows(&self, stack: &Stack) -> BTreeMap<String, u32> {
        match self.sinks {
            Sinks::Local => {
                let conn =
                    rusqlite::Connection::open(&stack.settings.warehouse.sqlite.path).unwrap();
                conn.prepare("SELECT id, count(*) FROM events GROUP BY id")
                    .unwrap()
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            }
            Sinks::Gcp { .. } => {
                let bq = &stack.settings.warehouse.bigquery;
                let warehouse = BigQueryWarehouse::connect(PROJECT, bq).await.unwrap();
                let sql = format!(
                    "SELECT id, COUNT(*) FROM `{PROJECT}.{}.events` GROUP BY id",
                    bq.dataset
                );
                warehouse
                    .query(&sql)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|r| Some((r.first()?.clone()?, r.get(1)?.clone()?.parse().ok()?)))
                    .collect()
            }
        }
    }

    /// Waits until nothing is left to redeliver: the embedded queue's topics are empty;
    /// on Pub/Sub, one ack deadline passes, so a lease a killed worker held has come back.
    async fn quiesce(&self) -> bool {
        match &self.queue {
            Some(queue) => queue_empty(queue).await,
            None => {
                // The longest a message can stay away: a lease (10 s). Without a retry
                // policy a nacked or expired message is delivered again at once.
                tokio::time::sleep(Duration::from_secs(16)).await;
                true
            }
        }
    }
}

/// What the end of a run found, by delivery id.
struct Findings {
    lost: Vec<String>,
    dup_archive: usize,
    dup_rows: usize,
    dup_slack: usize,
    missed_slack: Vec<String>,
}

async fn findings(
    engine: &Engine,
    stack: &Stack,
    acked: &BTreeSet<String>,
    fake: &FakeSlack,
    poison_too: bool,
) -> Findings {
    let objects = engine.objects(stack).await;
    let rows = engine.rows(stack).await;
    let posts = fake.posts.lock().unwrap().clone();
    let lost = acked
        .iter()
        .filter(|id| !objects.contains_key(*id) || !rows.contains_key(*id))
        .cloned()
        .collect();
    let missed_slack = acked
        .iter()
        .filter(|id| {
            id[2..]
                .parse::<usize>()
                .is_ok_and(|i| i.is_multiple_of(10) && (poison_too || !i.is_multiple_of(50)))
        })
        .filter(|id| !posts.contains_key(id.as_str()))
        .cloned()
        .collect();
    Findings {
        lost,
        dup_archive: objects.values().filter(|n| **n > 1).count(),
        dup_rows: rows.values().filter(|n| **n > 1).count(),
        dup_slack: posts.values().filter(|n| **n > 1).count(),
        missed_slack,
    }
}

struct Run {
    count: usize,
    phase: Duration,
    slack_phase: Duration,
    /// How often the worker is SIGKILLed and started again; `None`: it runs throughout.
    kill_every: Option<Duration>,
}

impl Run {
    fn from_env(default_count: u64, kill_every: Option<Duration>) -> Self {
        let phase = Duration::from_secs(env_num("HOOKLINE_FAULTS_PHASE_SECS", 2));
        Self {
            count: env_num("HOOKLINE_FAULTS_COUNT", default_count) as usize,
            phase,
            slack_phase: Duration::from_secs(env_num(
                "HOOKLINE_FAULTS_SLACK_SECS",
                phase.as_secs(),
            )),
            kill_every,
        }
    }
}

async fn fake_slack() -> (MockServer, FakeSlack) {
    let slack = MockServer::start().await;
    let fake = FakeSlack::default();
    fake.refuse_poison.store(true, Ordering::SeqCst);
    Mock::given(method("POST"))
        .respond_with(fake.clone())
        .mount(&slack)
        .await;
    (slack, fake)
}

/// The shared part of the TOML: worker retries (plus `worker_extra` lines), Slack, the
/// source.
fn common_toml(worker_extra: &str) -> String {
    format!(
        r#"
[worker]
sink_retry_min_ms = 50
sink_retry_max_ms = 500
{worker_extra}
[slack]
webhook_url_env = "FAULTS_SLACK_URL"
# The fake Slack has no rate limit; pacing is tested on its own (slack::pacer). At Slack's
# one post a second, 1,000 `issues` deliveries would take the full run 17 minutes.
min_interval_ms = 5
[sources.gh]
provider = "github"
secrets = ["{SECRET}"]
"#
    )
}

async fn run_faults(run: Run, stack: Stack, mut engine: Engine, fake: FakeSlack) {
    let worker_port = free_port();
    let mut runs = 0;
    let ingest = Arc::new(Mutex::new(Some(stack.spawn(
        "ingest",
        stack.ingest_port,
        runs,
    ))));
    let worker = Arc::new(Mutex::new(Some(stack.spawn("worker", worker_port, runs))));
    let _reaper = Reaper(vec![Arc::clone(&ingest), Arc::clone(&worker)]);
    let stack = Arc::new(stack);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sending = tokio::spawn(send_all(stack.ingest_port, run.count));
    let started = Instant::now();

    // Faults, one after another, while the load runs; the worker is also killed between them.
    let stop_killing = Arc::new(AtomicBool::new(false));
    let killer = {
        let (worker, stop, stack) = (
            Arc::clone(&worker),
            Arc::clone(&stop_killing),
            Arc::clone(&stack),
        );
        let every = run.kill_every;
        tokio::spawn(async move {
            let Some(every) = every else { return 0 };
            let mut kills = 0;
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(every).await;
                if let Some(child) = worker.lock().unwrap().take() {
                    kill9(child);
                }
                kills += 1;
                *worker.lock().unwrap() = Some(stack.spawn("worker", worker_port, 100 + kills));
            }
            kills
        })
    };
    // Slack: 500, then 429 with Retry-After.
    fake.mode.store(1, Ordering::SeqCst);
    tokio::time::sleep(run.slack_phase).await;
    fake.mode.store(2, Ordering::SeqCst);
    tokio::time::sleep(run.slack_phase).await;
    fake.mode.store(0, Ordering::SeqCst);
    engine.archive_outage(&stack, run.phase).await;
    engine.warehouse_outage(&stack, run.phase).await;
    // Ingest is killed mid-load and restarted.
    if let Some(child) = ingest.lock().unwrap().take() {
        kill9(child);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    runs += 1;
    *ingest.lock().unwrap() = Some(stack.spawn("ingest", stack.ingest_port, runs));

    let acked = sending.await.unwrap();
    stop_killing.store(true, Ordering::SeqCst);
    let kills = killer.await.unwrap();
    eprintln!("the worker was SIGKILLed {kills} times");
    // A worker started during an outage may have exited; the last one must be running.
    {
        let mut w = worker.lock().unwrap();
        if w.as_mut().is_none_or(|c| !matches!(c.try_wait(), Ok(None))) {
            *w = Some(stack.spawn("worker", worker_port, 999));
        }
    }

    // Everything but the poison is done (on Pub/Sub, where the backlog cannot be read,
    // seen from the sinks; the embedded queue below says when its topic is empty, which
    // also covers deliveries that used up their attempts during an outage)...
    let mut progress = Progress::new();
    if engine.queue.is_none() {
        loop {
            let f = findings(&engine, &stack, &acked, &fake, false).await;
            let left = f.lost.len() + f.missed_slack.len();
            if left == 0 || !progress.advancing(left) {
                break;
            }
            eprintln!(
                "settling: {} not yet archived and in the warehouse, {} not yet posted",
                f.lost.len(),
                f.missed_slack.len()
            );
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
    // ...and every poison delivery has been refused and has reached the dead-letter side...
    let poison = acked
        .iter()
        .filter(|id| id[2..].parse::<usize>().is_ok_and(|i| i.is_multiple_of(50)))
        .count();
    // The embedded queue says when its topic is empty; on Pub/Sub, wait until Slack has
    // refused every poison delivery (one may also have used up its attempts during an
    // outage and reached the dead-letter side unrefused: wait, but do not insist).
    if engine.queue.is_none() {
        let _ = http::wait_for(Duration::from_secs(60), async || {
            fake.refused.lock().unwrap().len() >= poison
        })
        .await;
    }
    let quiet_before_fix = engine.quiesce().await;
    // ...then Slack is "fixed" and the dead letters are replayed until every poison
    // delivery has been posted.
    fake.refuse_poison.store(false, Ordering::SeqCst);
    let mut replayed = 0;
    let mut quiet = true;
    for round in 0..REPLAY_ROUNDS {
        replayed += stack.replay(round);
        // What was replayed goes through before the next replay: replaying again while the
        // first copies still wait in the queue would only add copies of the same deliveries.
        let mut progress = Progress::within(REPLAY_STALL);
        loop {
            let missed = findings(&engine, &stack, &acked, &fake, true)
                .await
                .missed_slack
                .len();
            if missed == 0 || !progress.advancing(missed) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        quiet = engine.quiesce().await;
        let missed = findings(&engine, &stack, &acked, &fake, true)
            .await
            .missed_slack
            .len();
        // On the embedded queue the dead-letter side must be empty too (on Pub/Sub it
        // cannot be counted): a delivery dead-lettered again is replayed again.
        let dead = match &engine.queue {
            Some(queue) => queue.depth(DEAD_LETTER_TOPIC).await.unwrap(),
            None => (0, 0),
        };
        eprintln!("replay round {round}: {missed} not yet posted, {dead:?} dead letters left");
        if missed == 0 && dead == (0, 0) {
            break;
        }
    }
    if let Some(queue) = &engine.queue {
        let dead_left = queue.depth(DEAD_LETTER_TOPIC).await.unwrap();
        assert_eq!(
            dead_left,
            (0, 0),
            "every dead letter was replayed (logs in {})",
            stack.path.display()
        );
    }

    if let Some(w) = worker.lock().unwrap().take() {
        terminate(w);
    }
    if let Some(i) = ingest.lock().unwrap().take() {
        terminate(i);
    }

    let f = findings(&engine, &stack, &acked, &fake, true).await;
    println!(
        "sent={} acked={} lost={} dup_archive={} dup_rows={} dup_slack={} \
         missed_slack={} dead={replayed} replayed={replayed} seconds={}",
        run.count,
        acked.len(),
        f.lost.len(),
        f.dup_archive,
        f.dup_rows,
        f.dup_slack,
        f.missed_slack.len(),
        started.elapsed().as_secs()
    );
    let dups: Vec<_> = fake
        .posts
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| format!("{id}x{n}"))
        .collect();
    if !dups.is_empty() {
        println!("slack posted more than once: {dups:?}");
    }
    let logs = stack.path.display();
    assert!(
        quiet && quiet_before_fix,
        "the queue did not drain (logs in {logs})"
    );
    assert_eq!(
        acked.len(),
        run.count,
        "every delivery eventually got a 200"
    );
    assert!(f.lost.is_empty(), "lost: {:?} (logs in {logs})", f.lost);
    assert_eq!(
        (f.dup_archive, f.dup_rows),
        (0, 0),
        "duplicate archive objects or rows"
    );
    assert!(
        f.missed_slack.is_empty(),
        "missed Slack posts: {:?}",
        f.missed_slack
    );
    assert!(
        replayed >= (run.count as u64).div_ceil(50),
        "the poison messages were dead-lettered and replayed: {replayed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_never_loses_never_doubles_under_faults() {
    let _serial = SERIAL.lock().await;
    let run = Run::from_env(300, Some(Duration::from_millis(1500)));
    let (slack, fake) = fake_slack().await;
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
{}"#,
        common_toml(&format!(
            "ledger_path = \"{d}/ledger.sqlite3\"\npoll_interval_ms = 20"
        ))
    );
    let env = vec![("FAULTS_SLACK_URL".into(), format!("{}/hook", slack.uri()))];
    let stack = Stack::new(dir, &toml, env);
    let queue =
        EmbeddedQueue::open(&stack.settings.queue.embedded, Duration::from_millis(20)).unwrap();
    let engine = Engine {
        queue: Some(queue),
        sinks: Sinks::Local,
    };
    run_faults(run, stack, engine, fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_never_loses_never_doubles_under_faults() {
    let pubsub = required_env("PUBSUB_EMULATOR_HOST");
    let _serial = SERIAL.lock().await;
    // Two bugs of the emulator (0.8.20) shape this run; `scripts/pubsub-emulator-bugs.py`
    // shows them.
    // - The worker is not killed here: the emulator keeps pushing messages to a stream
    //   whose client was SIGKILLed, forever, so every killed worker leaves a stream that
    //   takes messages and never settles them (each comes back 10 s later, to be taken
    //   again, one delivery attempt spent). After 3 killed clients a live one received 8
    //   of 20 new messages in 30 s. Real Pub/Sub ends a stream whose connection is gone.
    //   The next test kills the worker on Pub/Sub on a run small enough for that; the one
    //   after it kills it every 1.5 s against Cloud Storage and BigQuery at any size,
    //   with the embedded queue.
    // - The subscription has no retry policy: with one, a message nacked or expired on
    //   its second attempt or later waits in a delay queue, and when one ack id gets
    //   queued twice (two leases expiring together; two nacks in one millisecond, one of
    //   which then expires) the timer that drains that queue throws a
    //   NullPointerException and is never scheduled again; from then on no such message
    //   is delivered again. With the policy on, all 40 Slack deliveries of a
    //   400-delivery run stranded after 2 or 3 nacks, in both runs measured.
    pubsub_faults(pubsub, Run::from_env(200, None)).await;
}

/// Every fault on Pub/Sub, the worker SIGKILLed every 2 s too, on a small run
/// (`HOOKLINE_FAULTS_PUBSUB_KILL_COUNT`, default 100, whatever `HOOKLINE_FAULTS_COUNT` says):
/// each kill leaves the emulator a dead stream that takes a share of the messages and lets
/// them expire (above), so a message may need many attempts to reach the live worker, and a
/// few use up their 30 and are dead-lettered, to be replayed with the poison ones. What this
/// proves is Pub/Sub's side of a kill: what a dead worker held comes back and is done once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_pubsub_never_loses_never_doubles_when_the_worker_is_killed() {
    let pubsub = required_env("PUBSUB_EMULATOR_HOST");
    let _serial = SERIAL.lock().await;
    let mut run = Run::from_env(100, Some(Duration::from_secs(2)));
    run.count = env_num("HOOKLINE_FAULTS_PUBSUB_KILL_COUNT", 100) as usize;
    pubsub_faults(pubsub, run).await;
}

/// The fault run with the Pub/Sub emulator as the queue and the test's own storage and
/// BigQuery emulators as sinks.
async fn pubsub_faults(pubsub: String, run: Run) {
    let (slack, fake) = fake_slack().await;
    let dir = tempfile::tempdir().unwrap();
    let (sinks, sinks_toml, mut env) = gcp_sinks(dir.path()).await;
    let suffix = format!("{:08x}", rand::random::<u32>());
    let toml = format!(
        r#"
[queue]
backend = "pubsub"
[queue.pubsub]
topic = "faults-{suffix}"
subscription = "faults-worker-{suffix}"
dead_letter_topic = "faults-dead-{suffix}"
dead_letter_subscription = "faults-dead-ops-{suffix}"
ack_deadline_secs = 10
max_delivery_attempts = 30
retry_policy = false
min_backoff_secs = 1
max_backoff_secs = 5
{sinks_toml}"#
    );
    env.push(("PUBSUB_EMULATOR_HOST".into(), pubsub));
    env.push(("FAULTS_SLACK_URL".into(), format!("{}/hook", slack.uri())));
    let stack = Stack::new(dir, &toml, env);
    stack.provision();
    let engine = Engine { queue: None, sinks };
    run_faults(run, stack, engine, fake).await;
}

/// The worker SIGKILLed every 1.5 s while it writes to Cloud Storage and BigQuery (their
/// emulators), with every other fault too. The queue is the embedded one, which redelivers
/// what a dead worker held (see above for why not the Pub/Sub emulator): what is proven here
/// is the sinks' side, a kill between an effect and its ledger record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_sinks_never_lose_never_double_when_the_worker_is_killed() {
    let _serial = SERIAL.lock().await;
    let run = Run::from_env(200, Some(Duration::from_millis(1500)));
    let (slack, fake) = fake_slack().await;
    let dir = tempfile::tempdir().unwrap();
    let (sinks, sinks_toml, mut env) = gcp_sinks(dir.path()).await;
    let d = dir.path().display();
    let toml = format!(
        r#"
[queue.embedded]
path = "{d}/queue.sqlite3"
ack_deadline_secs = 5
max_delivery_attempts = 30
min_backoff_ms = 500
max_backoff_ms = 5000
{sinks_toml}"#
    );
    env.push(("FAULTS_SLACK_URL".into(), format!("{}/hook", slack.uri())));
    let stack = Stack::new(dir, &toml, env);
    stack.provision();
    let queue =
        EmbeddedQueue::open(&stack.settings.queue.embedded, Duration::from_millis(20)).unwrap();
    let engine = Engine {
        queue: Some(queue),
        sinks,
    };
    run_faults(run, stack, engine, fake).await;
}

/// Starts fake-gcs-server (in memory) and bqemulator (file-backed under `data`); returns them, the
/// configuration for them (with `[server]`, `[gcp]`, the worker and Slack), and their
/// environment.
async fn gcp_sinks(data: &Path) -> (Sinks, String, Vec<(String, String)>) {
    let gcs_bin = required_env("HOOKLINE_FAKE_GCS_BIN");
    let bq_bin = required_env("HOOKLINE_BQEMULATOR_BIN");
    let (gcs_port, bq_port, bq_grpc_port) = (free_port(), free_port(), free_port());
    let mut gcs = Emulator {
        name: "fake-gcs",
        program: gcs_bin,
        args: [
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            &gcs_port.to_string(),
            "-backend",
            "memory",
            "-public-host",
            &format!("127.0.0.1:{gcs_port}"),
            "-external-url",
            &format!("http://127.0.0.1:{gcs_port}"),
        ]
        .map(String::from)
        .to_vec(),
        ready_url: format!("http://127.0.0.1:{gcs_port}/storage/v1/b?project={PROJECT}"),
        log_dir: data.to_path_buf(),
        child: None,
        runs: 0,
    };
    let mut bigquery = Emulator {
        name: "bqemulator",
        program: bq_bin,
        args: [
            "start",
            "--rest-host",
            "127.0.0.1",
            "--rest-port",
            &bq_port.to_string(),
            "--grpc-host",
            "127.0.0.1",
            "--grpc-port",
            &bq_grpc_port.to_string(),
            "--project",
            PROJECT,
            "--persistent",
            "--data-dir",
            data.join("bq").to_str().unwrap(),
            "--log-level",
            "warning",
        ]
        .map(String::from)
        .to_vec(),
        ready_url: format!("http://127.0.0.1:{bq_port}/bigquery/v2/projects/{PROJECT}/datasets"),
        log_dir: data.to_path_buf(),
        child: None,
        runs: 0,
    };
    tokio::join!(gcs.start(), bigquery.start());
    let suffix = format!("{:08x}", rand::random::<u32>());
    let toml = format!(
        r#"
[server]
host = "127.0.0.1"
[gcp]
project = "{PROJECT}"
[archive]
backend = "gcs"
[archive.gcs]
bucket = "faults-{suffix}"
[warehouse]
backend = "bigquery"
[warehouse.bigquery]
dataset = "faults_{suffix}"
{}"#,
        common_toml("")
    );
    let env = vec![
        (
            "STORAGE_EMULATOR_HOST".into(),
            format!("http://127.0.0.1:{gcs_port}"),
        ),
        (
            "BIGQUERY_EMULATOR_HOST".into(),
            format!("http://127.0.0.1:{bq_port}"),
        ),
    ];
    let sinks = Sinks::Gcp {
        gcs: Box::new(gcs),
        bigquery: Box::new(bigquery),
    };
    (sinks, toml, env)
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

/// The lowest count of outstanding work seen so far, and when a run that has not lowered it
/// since counts as stuck.
struct Progress {
    lowest: usize,
    window: Duration,
    deadline: Instant,
}

impl Progress {
    fn new() -> Self {
        Self::within(NO_PROGRESS)
    }

    /// Stuck once `window` passes without the count falling.
    fn within(window: Duration) -> Self {
        Self {
            lowest: usize::MAX,
            window,
            deadline: Instant::now() + window,
        }
    }

    /// Records `left`; false once the window has passed since it last fell.
    fn advancing(&mut self, left: usize) -> bool {
        if left < self.lowest {
            self.lowest = left;
            self.deadline = Instant::now() + self.window;
        }
        Instant::now() <= self.deadline
    }
}

/// Waits until the main topic of `queue` is empty; false after [`NO_PROGRESS`] without its
/// backlog falling.
async fn queue_empty(queue: &EmbeddedQueue) -> bool {
    let mut progress = Progress::new();
    let mut reported = Instant::now();
    loop {
        let (visible, leased) = queue.depth(MAIN_TOPIC).await.unwrap();
        let left = usize::try_from(visible + leased).unwrap();
        if left == 0 {
            return true;
        }
        if !progress.advancing(left) {
            return false;
        }
        if reported.elapsed() >= Duration::from_secs(5) {
            eprintln!("draining: {left} messages in the queue");
            reported = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
