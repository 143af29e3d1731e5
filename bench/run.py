#!/usr/bin/env python3
"""hookline's benchmark harness (issue 7): every contender side by side, in one run, on
this machine; writes BENCHMARKS.md (or, with --smoke, target/bench/smoke.md).

Run it through bench/run.sh, which installs what is missing (wrk, webhook, the Python venv
for the seeds' Flask app, the Google emulators) and builds hookline. Directly:

    python3 bench/run.py [--smoke] [--duration S] [--warmup S] [--reps N]
                         [--connections C] [--only NAME,...] [--hookline PATH]

Contenders (names for --only):
    hookline-null      ingest, queue.backend = bench_discard (verify + 200): the ceiling
    hookline-embedded  ingest -> embedded durable queue (SQLite, fsync per group commit)
    hookline-pubsub    ingest -> Pub/Sub emulator
    flask-seed         the seeds' design: Flask + google-cloud-pubsub under gunicorn,
                       same emulator and topic (comparison only, bench/flask_seed/)
    webhook            adnanh/webhook with a payload-hmac-sha256 rule running /bin/true
    worker-embedded    worker throughput, embedded sinks (queue, archive, warehouse)
    worker-lag         enqueue -> done lag at a paced 500 events/s, embedded
    worker-pubsub      worker throughput on the emulators (Pub/Sub, GCS, BigQuery)

Only the standard library is used here; gunicorn runs from target/bench/venv.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.dont_write_bytecode = True  # no __pycache__ under bench/
import sender  # noqa: E402

WORK_ROOT = REPO / "target" / "bench"
# Earlier runs' work folders, deleted once a run's measurements are done (see set_aside).
SET_ASIDE_PREFIX = "set-aside-"
VENV = WORK_ROOT / "venv"
PAYLOAD = BENCH / "payloads" / "issues-opened.json"
LUA = BENCH / "wrk" / "signed_post.lua"
HOOKS_JSON = BENCH / "webhook" / "hooks.json"
FLASK_DIR = BENCH / "flask_seed"
EMULATORS_SH = REPO / "scripts" / "emulators.sh"
EMULATOR_HOME = Path(os.environ.get("HOOKLINE_EMULATOR_HOME", REPO / "target" / "emulators"))


def mem_total_kb() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


# The Pub/Sub emulator's JVM options when the harness starts it: ZGC on a fixed heap touched
# at start, 4 GB (a quarter of the memory, the JVM's default maximum, on a machine with less
# than 16 GB). Why, with the measurements: the Method bullet "The Pub/Sub emulator's garbage
# collector" in render().
EMULATOR_HEAP_MIB = max(256, min(4096, mem_total_kb() // 1024 // 4))
EMULATOR_JVM_OPTS = (f"-XX:+UseZGC -Xms{EMULATOR_HEAP_MIB}m -Xmx{EMULATOR_HEAP_MIB}m "
                     "-XX:+AlwaysPreTouch")

SECRET = "hookline-bench-secret"
HOOK_PATH = "/hooks/github"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NPROC = os.cpu_count() or 1

INGEST = ["hookline-null", "hookline-embedded", "hookline-pubsub", "flask-seed", "webhook"]
WORKER = ["worker-embedded", "worker-lag", "worker-pubsub"]
ALL = INGEST + ["pubsub-floor"] + WORKER
NEEDS_EMULATORS = {"hookline-pubsub", "flask-seed", "pubsub-floor", "worker-pubsub"}
# pubsub-floor's batch sizes, besides the number of connections (the most (3) can batch).
FLOOR_BATCHES = (1, 8, 1000)
# Contenders whose queue lives in their own process: restarted on a fresh data directory
# before each repetition (see bench_ingest's empty_queue).
FRESH_QUEUE_EACH_REP = ("hookline-embedded",)
LABEL = {
    "hookline-null": "(1) hookline ingest, null queue",
    "hookline-embedded": "(2) hookline ingest → embedded queue",
    "hookline-pubsub": "(3) hookline ingest → Pub/Sub emulator",
    "flask-seed": "(4) seeds' design: Flask + gunicorn → Pub/Sub emulator (comparison only)",
    "webhook": "(5) adnanh/webhook, payload-hmac-sha256 → /bin/true",
}
# Names the ingest benchmarks publish to (as `hookline provision` creates them by default).
GCP_INGEST_NAMES = {
    "topic": "hookline-events",
    "subscription": "hookline-worker",
    "dead_letter_topic": "hookline-events-dead-letter",
    "dead_letter_subscription": "hookline-dead-letter-operators",
    "bucket": "hookline-bench-archive",
    "dataset": "hookline_bench",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ------------------------------------------------------------------------------ /proc --


def _stat(pid: int):
    """(state, ppid, pgrp, utime+stime+cutime+cstime in ticks) or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rfind(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[2]), sum(int(x) for x in rest[11:15])


def _all_stats():
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st:
                out[int(d)] = st
    return out


def process_tree(root: int) -> list[int]:
    stats = _all_stats()
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        children.setdefault(st[1], []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            tree.append(pid)
            todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of every live process in the tree, plus what each reaped (cutime,
    cstime): children that came and went (webhook's commands) are counted too."""
    total = 0
    for pid in process_tree(root):
        st = _stat(pid)
        if st:
            total += st[3]
    return total / CLK_TCK


def group_cpu_seconds(pgrp: int) -> float:
    return sum(st[3] for st in _all_stats().values() if st[2] == pgrp) / CLK_TCK


def vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# --------------------------------------------------------------------------- services --


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """Status of a GET on 127.0.0.1:port, or None when nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                      .encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return int(data.split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return None


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


STARTED: list["Service"] = []


class Service:
    """A process in its own session (process group), with its log in the work dir."""

    def __init__(self, name: str, argv: list[str], env: dict, port: int, ready_path: str,
                 logdir: Path, cwd: Path = REPO, rss_tree: bool = False):
        self.name, self.argv, self.env, self.port = name, argv, env, port
        self.ready_path, self.cwd, self.rss_tree = ready_path, cwd, rss_tree
        self.log_path = logdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.ready_ms: float | None = None
        self.spawned_at = 0.0

    def start(self, timeout: float = 60.0) -> "Service":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")
        self.spawned_at = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                     stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        STARTED.append(self)
        deadline = self.spawned_at + timeout
        while True:
            if http_status(self.port, self.ready_path, timeout=0.5) == 200:
                self.ready_ms = (time.perf_counter() - self.spawned_at) * 1000
                log(f"{self.name}: ready in {self.ready_ms:.1f} ms (pid {self.proc.pid}, port {self.port})")
                return self
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode} before it was "
                                 f"ready; log {self.log_path}:\n{self.log_tail()}")
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.name} not ready after {timeout:.0f} s; log "
                                 f"{self.log_path}:\n{self.log_tail()}")
            time.sleep(0.001)

    def log_tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} died (exit {self.proc.returncode}); log "
                             f"{self.log_path}:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def peak_rss_mb(self) -> float:
        pids = process_tree(self.proc.pid) if self.rss_tree else [self.proc.pid]
        return sum(vm_hwm_kb(p) for p in pids) / 1024

    def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        pgid = self.proc.pid  # its own session: the group id is its pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=12)
        except subprocess.TimeoutExpired:
            log(f"{self.name}: no exit 12 s after SIGTERM; SIGKILL")
        try:  # whatever is left in the group (gunicorn workers, webhook's commands)
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def stop_all() -> None:
    while STARTED:
        STARTED.pop().stop()


# ------------------------------------------------------------------------- emulators --


class Emulators:
    """The Google emulators, through scripts/emulators.sh. Already running: reused and left
    running; started here: stopped at the end."""

    def __init__(self):
        self.env: dict[str, str] = {}
        self.started = False
        self.project = ""
        self.collector = "n/a"

    def ensure(self) -> None:
        if self.env:
            return
        st = subprocess.run([str(EMULATORS_SH), "status"], capture_output=True, text=True)
        if st.returncode == 0:
            log("emulators already running: reusing them")
        else:
            log("starting the emulators (scripts/emulators.sh start)")
            self.started = True
            # The emulator's launcher adds CLOUD_PUBSUB_EMULATOR_OPTS to the JVM's options.
            env = {**os.environ, "CLOUD_PUBSUB_EMULATOR_OPTS": EMULATOR_JVM_OPTS}
            r = subprocess.run([str(EMULATORS_SH), "start"], capture_output=True, text=True,
                               timeout=900, env=env)
            if r.returncode != 0:
                raise BenchError(f"scripts/emulators.sh start failed:\n{r.stderr[-3000:]}")
        self.collector = self.pubsub_collector()
        if "ZGC" not in self.collector:
            log(f"the running Pub/Sub emulator's JVM uses {self.collector}: its pauses will be in "
                "(3)'s and (4)'s latencies (stop it with scripts/emulators.sh stop and the harness "
                f"starts it with {EMULATOR_JVM_OPTS})")
        env_file = EMULATOR_HOME / "env"
        for line in env_file.read_text().splitlines():
            m = re.match(r"export (\w+)=(.*)$", line.strip())
            if m:
                self.env[m.group(1)] = m.group(2)
        self.project = self.env.get("HOOKLINE_GCP_PROJECT", "hookline-test")
        self.env["GOOGLE_CLOUD_PROJECT"] = self.project

    def stop(self) -> None:
        if self.started:
            log("stopping the emulators")
            subprocess.run([str(EMULATORS_SH), "stop"], capture_output=True, timeout=120)
            self.started = False

    def pubsub_pgrp(self) -> int | None:
        try:
            return int((EMULATOR_HOME / "run" / "pubsub.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pubsub_collector(self) -> str:
        """The garbage collector the Pub/Sub emulator's JVM was started with and its heap
        options, from its command line."""
        pg = self.pubsub_pgrp()
        for pid, st in (_all_stats().items() if pg else ()):
            if st[2] != pg:
                continue
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if not argv or not argv[0].endswith(b"java"):
                continue
            flags = [a.decode() for a in argv if re.fullmatch(rb"-XX:\+Use\w+GC", a)]
            heap = [a.decode() for a in argv
                    if re.fullmatch(rb"-Xm[sx]\w+|-XX:\+AlwaysPreTouch", a)]
            gc = flags[-1].removeprefix("-XX:+Use") if flags else "G1 (the JVM's default)"
            return f"{gc}, `{' '.join(flags[-1:] + heap)}`" if flags or heap else gc
        return "n/a"

    def pubsub_cpu(self) -> float:
        pg = self.pubsub_pgrp()
        return group_cpu_seconds(pg) if pg else 0.0

    def pubsub_url(self, path: str) -> str:
        return f"http://{self.env['PUBSUB_EMULATOR_HOST']}/v1/projects/{self.project}/{path}"

    def delete_subscription(self, name: str) -> None:
        req = urllib.request.Request(self.pubsub_url(f"subscriptions/{name}"), method="DELETE")
        try:
            urllib.request.urlopen(req, timeout=30).read()
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise


# --------------------------------------------------------------------------- hookline --


def hookline_toml(kind: str, data: Path | None = None, project: str = "",
                  names: dict | None = None) -> str:
    text = (
        '[server]\nhost = "127.0.0.1"\n\n'
        # An unset variable: the worker logs Slack messages instead of posting them.
        '[slack]\nwebhook_url_env = "HOOKLINE_BENCH_SLACK_URL_UNSET"\n\n'
        f'[sources.github]\nprovider = "github"\nsecrets = ["{SECRET}"]\n\n'
    )
    if kind == "null":
        text += '[queue]\nbackend = "bench_discard"\n'
    elif kind == "embedded":
        text += (
            f'[queue]\nbackend = "embedded"\n[queue.embedded]\npath = "{data}/queue.sqlite3"\n\n'
            f'[archive]\nbackend = "local"\n[archive.local]\nroot = "{data}/archive"\n\n'
            f'[warehouse]\nbackend = "sqlite"\n[warehouse.sqlite]\npath = "{data}/warehouse.sqlite3"\n\n'
            f'[worker]\nledger_path = "{data}/ledger.sqlite3"\n'
        )
    elif kind == "gcp":
        n = names
        text += (
            f'[gcp]\nproject = "{project}"\n\n'
            f'[queue]\nbackend = "pubsub"\n[queue.pubsub]\ntopic = "{n["topic"]}"\n'
            f'subscription = "{n["subscription"]}"\ndead_letter_topic = "{n["dead_letter_topic"]}"\n'
            f'dead_letter_subscription = "{n["dead_letter_subscription"]}"\n\n'
            f'[archive]\nbackend = "gcs"\n[archive.gcs]\nbucket = "{n["bucket"]}"\n\n'
            f'[warehouse]\nbackend = "bigquery"\n[warehouse.bigquery]\ndataset = "{n["dataset"]}"\n'
        )
    else:
        raise ValueError(kind)
    return text


def sign(body: bytes) -> str:
    """GitHub's signature of `body` with the contenders' secret (hex HMAC-SHA256)."""
    return hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def clean_env(extra: dict | None = None) -> dict:
    """The caller's environment without anything that configures hookline or the Google
    clients behind the harness's back."""
    drop = ("HOOKLINE_", "RUST_LOG", "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST",
            "BIGQUERY_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "SLACK_WEBHOOK_URL", "PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra or {})
    return env


class Ctx:
    """What every step needs: arguments, paths, the signed payload, the emulators."""

    def __init__(self, args):
        self.args = args
        self.hookline = Path(args.hookline).resolve()
        self.work = WORK_ROOT / ("smoke-work" if args.smoke else "work")
        self.logs = self.work / "logs"
        self.body = PAYLOAD.read_bytes()
        self.signature = sign(self.body)
        self.emulators = Emulators()
        self.nonce = f"{int(time.time()) % 100000000:08d}"
        self.run_counter = 0
        self.gcp_provisioned = False
        self.pubsub_warm = False
        # The raw figures of the default report go to target/bench; a report written elsewhere
        # (--output, e.g. an A/B run) keeps its own beside it, so it never overwrites them.
        if args.output.resolve() == (REPO / "BENCHMARKS.md").resolve():
            self.results_path = WORK_ROOT / "results.json"
        else:
            self.results_path = args.output.with_suffix(".json")

    def run_id(self, tag: str) -> str:
        self.run_counter += 1
        return f"b{self.nonce}-{tag}-{self.run_counter}"

    def hookline_env(self, extra: dict | None = None, gcp: bool = False) -> dict:
        env = clean_env({"RUST_LOG": "warn", "HOOKLINE_LOG_FORMAT": "json"})
        if gcp:
            env.update(self.emulators.env)
        env.update(extra or {})
        return env

    def write_config(self, name: str, text: str) -> Path:
        p = self.work / "config" / f"{name}.toml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    def hookline_service(self, name: str, command: str, config: Path, gcp: bool = False) -> Service:
        port = free_port()
        env = self.hookline_env({"PORT": str(port)}, gcp=gcp)
        return Service(name, [str(self.hookline), "--config", str(config), command], env, port,
                       "/readyz", self.logs)

    def provision(self, config: Path) -> float:
        t0 = time.perf_counter()
        r = subprocess.run([str(self.hookline), "--config", str(config), "provision"],
                           env=self.hookline_env(gcp=True), capture_output=True, text=True,
                           timeout=300)
        if r.returncode != 0:
            raise BenchError(f"hookline provision failed:\n{r.stdout}\n{r.stderr[-3000:]}")
        return time.perf_counter() - t0

    def gcp_ingest_config(self) -> Path:
        """The ingest benchmarks' GCP configuration, provisioned with an empty worker
        subscription: called before every repetition of (3) and (4) (the emulator keeps every
        unacked message in its heap; see Method)."""
        self.emulators.ensure()
        warm_pubsub(self)
        cfg = self.write_config("gcp-ingest", hookline_toml(
            "gcp", project=self.emulators.project, names=GCP_INGEST_NAMES))
        if self.gcp_provisioned:
            self.emulators.delete_subscription(GCP_INGEST_NAMES["subscription"])
        secs = self.provision(cfg)
        self.gcp_provisioned = True
        log(f"provisioned {GCP_INGEST_NAMES['topic']} (+subscription, bucket, dataset) in {secs:.1f} s")
        return cfg


# ------------------------------------------------------------------------------- wrk --


def wrk_env(signature: str, run_id: str, threads: int, unique_ids: bool = True) -> dict:
    """The environment `wrk/signed_post.lua` reads: the payload, its signature (hex HMAC of
    the body with SECRET), delivery ids unique per request and prefixed with `run_id`."""
    return clean_env({
        "BENCH_BODY": str(PAYLOAD), "BENCH_SIGNATURE": signature, "BENCH_PATH": HOOK_PATH,
        "BENCH_UNIQUE_IDS": "1" if unique_ids else "0", "BENCH_RUN_ID": run_id,
        "BENCH_THREADS": str(threads),
    })


def run_wrk(ctx: Ctx, port: int, seconds: int, unique_ids: bool = True,
            rate: float | None = None, connections: int | None = None) -> dict:
    """One wrk run; `rate` paces it (see delay() in the Lua script)."""
    connections = connections or ctx.args.connections
    threads = max(1, min(NPROC, connections))
    env = wrk_env(ctx.signature, ctx.run_id("wrk"), threads, unique_ids)
    if rate:
        env["BENCH_RATE"] = f"{rate:.3f}"
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
           "--timeout", "10s", "--latency", "-s", str(LUA), f"http://127.0.0.1:{port}{HOOK_PATH}"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 120)
    line = next((l for l in r.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if r.returncode != 0 or line is None:
        raise BenchError(f"wrk failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    res = json.loads(line[len("BENCH_JSON "):])
    e = res["errors"]
    res["non2xx"] = e["status"]
    res["socket_errors"] = e["connect"] + e["read"] + e["write"] + e["timeout"]
    res["errors_total"] = res["non2xx"] + res["socket_errors"]
    res["ok"] = res["requests"] - res["non2xx"]
    res["rps"] = res["ok"] / (res["duration_us"] / 1e6)
    res["cmd"] = " ".join(shlex.quote(c) for c in cmd)
    return res


def paced(ctx: Ctx, port: int, rate: float, seconds: float, tag: str) -> dict:
    """bench/sender.py at a fixed rate (open loop; latency from each request's due time)."""
    count = max(1, int(rate * seconds))
    r = sender.run("127.0.0.1", port, HOOK_PATH, ctx.body, ctx.signature, rate=rate,
                   count=count, connections=ctx.args.connections,
                   delivery_prefix=ctx.run_id(tag) + "-")
    ms = lambda v: v * 1000  # noqa: E731
    return {
        "offered_rps": rate, "count": count, "ok": r.ok, "errors": r.errors,
        "statuses": {str(k): v for k, v in r.statuses.items()}, "socket_errors": r.socket_errors,
        "achieved_rps": r.achieved_rps, "elapsed_s": r.elapsed_s,
        "p50_ms": ms(sender.percentile(r.latencies_s, 50)),
        "p99_ms": ms(sender.percentile(r.latencies_s, 99)),
        "p999_ms": ms(sender.percentile(r.latencies_s, 99.9)),
        "service_p99_ms": ms(sender.percentile(r.service_s, 99)),
        "sender_max_start_lag_ms": ms(r.max_start_lag_s),
    }


# ------------------------------------------------------------------ ingest contenders --


def start_contender(ctx: Ctx, name: str) -> tuple[Service, bool]:
    """Returns the started service and whether the Pub/Sub emulator is in its path."""
    if name == "hookline-null":
        cfg = ctx.write_config(name, hookline_toml("null"))
        return ctx.hookline_service(name, "ingest", cfg).start(), False
    if name == "hookline-embedded":
        data = ctx.work / "data" / name
        shutil.rmtree(data, ignore_errors=True)
        cfg = ctx.write_config(name, hookline_toml("embedded", data))
        return ctx.hookline_service(name, "ingest", cfg).start(), False
    if name == "hookline-pubsub":
        cfg = ctx.gcp_ingest_config()
        return ctx.hookline_service(name, "ingest", cfg, gcp=True).start(), True
    if name == "flask-seed":
        ctx.gcp_ingest_config()  # same topic, fresh subscription
        port = free_port()
        env = clean_env({
            "BENCH_SECRET": SECRET, "BENCH_BIND": f"127.0.0.1:{port}",
            "BENCH_TOPIC": f"projects/{ctx.emulators.project}/topics/{GCP_INGEST_NAMES['topic']}",
            "PUBSUB_EMULATOR_HOST": ctx.emulators.env["PUBSUB_EMULATOR_HOST"],
            "GOOGLE_CLOUD_PROJECT": ctx.emulators.project, "PYTHONUNBUFFERED": "1",
        })
        gunicorn = VENV / "bin" / "gunicorn"
        if not gunicorn.exists():
            raise BenchError(f"{gunicorn} missing: run bench/run.sh (it creates the venv)")
        argv = [str(gunicorn), "-c", str(FLASK_DIR / "gunicorn.conf.py"), "--chdir",
                str(FLASK_DIR), "app:app"]
        return Service(name, argv, env, port, "/healthz", ctx.logs, rss_tree=True).start(120), True
    if name == "webhook":
        port = free_port()
        env = clean_env({"HOOKLINE_BENCH_SECRET": SECRET})
        argv = [shutil.which("webhook") or "webhook", "-hooks", str(HOOKS_JSON), "-template",
                "-ip", "127.0.0.1", "-port", str(port)]
        return Service(name, argv, env, port, "/", ctx.logs).start(), False
    raise ValueError(name)


def floor_publish(ctx: Ctx, batch: int, count: int) -> dict:
    """Publishes `count` copies of the payload in batches of `batch` (bench/pubsub_floor.py)
    and measures the emulator's process group around it."""
    ctx.emulators.ensure()
    python = VENV / "bin" / "python"
    if not python.exists():
        raise BenchError(f"{python} missing: run bench/run.sh (it creates the venv)")
    env = clean_env({"PUBSUB_EMULATOR_HOST": ctx.emulators.env["PUBSUB_EMULATOR_HOST"],
                     "GOOGLE_CLOUD_PROJECT": ctx.emulators.project})
    argv = [str(python), str(BENCH / "pubsub_floor.py"), "--payload", str(PAYLOAD),
            "--topic", ctx.run_id(f"floor-{batch}"), "--batch", str(batch), "--count", str(count)]
    cpu0 = ctx.emulators.pubsub_cpu()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    cpu = ctx.emulators.pubsub_cpu() - cpu0
    if r.returncode != 0:
        raise BenchError(f"pubsub_floor.py --batch {batch} failed:\n{r.stderr[-2000:]}")
    seconds = json.loads(r.stdout.strip().splitlines()[-1])["seconds"]
    return {"batch": batch, "messages": count, "seconds": seconds,
            "emulator_cpu_s_per_1k": cpu / count * 1000}


def warm_pubsub(ctx: Ctx) -> None:
    """Warms the emulator (a JVM) before its first measurement. Cold, it spends several times
    the CPU per message it spends once its JIT has compiled the publish path (batches of 32:
    0.25 CPU-s per 1,000 messages against 0.05 after about 60,000 messages), and (3), the
    first contender to use it, would pay for what (4) gets warm."""
    if ctx.pubsub_warm:
        return
    scale = 20 if ctx.args.smoke else 1
    started = time.monotonic()
    for _ in range(3):
        floor_publish(ctx, 1, 2000 // scale)
        floor_publish(ctx, 32, 20000 // scale)
    ctx.pubsub_warm = True
    log(f"warmed the Pub/Sub emulator ({66000 // scale:,} messages, {time.monotonic() - started:.0f} s)")


def bench_pubsub_floor(ctx: Ctx) -> dict:
    """The Pub/Sub emulator's own CPU per published message at several batch sizes."""
    warm_pubsub(ctx)
    scale = 20 if ctx.args.smoke else 1
    rows = []
    for batch in sorted(set(FLOOR_BATCHES) | {ctx.args.connections}):
        count = min(20000, max(2000, 250 * batch)) // scale  # a smoke run sends a twentieth
        rows.append(floor_publish(ctx, batch, max(count, batch)))
        log(f"batch {batch}: {rows[-1]['emulator_cpu_s_per_1k']:.3f} emulator CPU-s per 1,000 messages")
    return {"batches": rows, "connections": ctx.args.connections}


def floor_at(R: dict, batch: int) -> float | None:
    """The emulator's CPU-s per 1,000 messages at `batch`, as pubsub-floor measured it."""
    for row in (R.get("pubsub-floor") or {}).get("batches", []):
        if row["batch"] == batch:
            return row["emulator_cpu_s_per_1k"]
    return None


def pubsub_ceiling(R: dict, connections: int) -> tuple[float, float, float] | None:
    """(3)'s ceiling on this machine from the emulator's floor: each request waits for its own
    publish, so a publish carries at most `connections` messages. Returns (emulator CPU-s per
    1,000 at that batch, hookline's per 1,000 in (3), requests/s if nothing else used a core)."""
    floor = floor_at(R, connections)
    hookline = (R.get("hookline-pubsub") or {}).get("cpu_s_per_1k")
    if floor is None or hookline is None:
        return None
    return floor, hookline, NPROC * 1000 / (floor + hookline)


def bench_ingest(ctx: Ctx, name: str) -> dict:
    a = ctx.args
    svc, emulated = start_contender(ctx, name)
    result = {"name": name, "label": LABEL[name], "ready_ms": svc.ready_ms}
    peak_rss = 0.0

    def warm_up() -> None:
        seconds = a.emulator_warmup if emulated else a.warmup
        if seconds > 0:
            w = run_wrk(ctx, svc.port, seconds)
            result.setdefault("warmup", {"rps": w["rps"], "errors": w["errors_total"]})
            svc.check_alive()

    def empty_queue() -> None:
        """Each measurement starts from an empty queue, as in production, where the worker
        drains it (see Method): a fresh subscription for the emulator's contenders, a fresh
        process on a fresh data directory, warmed up again, for the embedded queue."""
        nonlocal svc, peak_rss
        if emulated:
            ctx.gcp_ingest_config()
        elif name in FRESH_QUEUE_EACH_REP:
            peak_rss = max(peak_rss, svc.peak_rss_mb())
            svc.stop()
            svc, _ = start_contender(ctx, name)
            warm_up()

    try:
        warm_up()
        reps, cpu, emu_cpu = [], 0.0, 0.0
        for i in range(a.reps):
            if i > 0 or emulated:
                empty_queue()
            cpu0, emu0 = svc.cpu_seconds(), ctx.emulators.pubsub_cpu() if emulated else 0.0
            r = run_wrk(ctx, svc.port, a.duration)
            cpu += svc.cpu_seconds() - cpu0
            emu_cpu += (ctx.emulators.pubsub_cpu() - emu0) if emulated else 0.0
            log(f"{name} rep {i + 1}/{a.reps}: {r['rps']:.0f} req/s, p99 "
                f"{r['latency_us']['p99'] / 1000:.2f} ms, errors {r['errors_total']}")
            reps.append(r)
            svc.check_alive()
            peak_rss = max(peak_rss, svc.peak_rss_mb())
        ok_total = sum(r["ok"] for r in reps)
        med = lambda key: statistics.median(r["latency_us"][key] / 1000 for r in reps)  # noqa: E731
        result.update({
            "reps": reps,
            "rps": statistics.median(r["rps"] for r in reps),
            "p50_ms": med("p50"), "p99_ms": med("p99"), "p999_ms": med("p999"),
            "errors": sum(r["errors_total"] for r in reps),
            "non2xx": sum(r["non2xx"] for r in reps),
            "socket_errors": sum(r["socket_errors"] for r in reps),
            "ok_total": ok_total,
            "peak_rss_mb": peak_rss,
            "cpu_s": cpu,
            "cpu_s_per_1k": cpu / ok_total * 1000 if ok_total else None,
            "emulator_cpu_s_per_1k": (emu_cpu / ok_total * 1000) if (emulated and ok_total) else None,
        })
        if name in ("hookline-embedded", "hookline-pubsub") and result["rps"] > 0:
            rate = result["rps"] / 2
            empty_queue()
            w = run_wrk(ctx, svc.port, a.duration, rate=rate, connections=a.paced_connections)
            hr = {"offered_rps": rate, "achieved_rps": w["rps"], "errors": w["errors_total"],
                  "p50_ms": w["latency_us"]["p50"] / 1000, "p99_ms": w["latency_us"]["p99"] / 1000,
                  "p999_ms": w["latency_us"]["p999"] / 1000, "late": w["late"],
                  "max_behind_ms": w["max_behind_ms"], "requests": w["requests"], "cmd": w["cmd"]}
            log(f"{name} at half rate ({rate:.0f}/s offered, {hr['achieved_rps']:.0f}/s achieved): "
                f"p99 {hr['p99_ms']:.2f} ms, errors {hr['errors']}, {hr['late']} sent late "
                f"(max {hr['max_behind_ms']:.1f} ms)")
            result["half_rate"] = hr
            svc.check_alive()
    finally:
        svc.stop()
    return result


# ------------------------------------------------------------------------- workers --


def count_rows(db: Path, table: str = "events") -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def wait_rows(db: Path, n: int, timeout: float, svc: Service) -> tuple[int, float]:
    """Polls the warehouse every 20 ms until it holds n rows; (rows, seconds since spawn)."""
    deadline = time.perf_counter() + timeout
    rows = 0
    while time.perf_counter() < deadline:
        rows = count_rows(db)
        if rows >= n:
            break
        svc.check_alive()
        time.sleep(0.02)
    return rows, time.perf_counter() - svc.spawned_at


def parse_ts(s: str) -> float:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def load_events(ctx: Ctx, port: int, n: int, tag: str) -> sender.SendResult:
    r = sender.run("127.0.0.1", port, HOOK_PATH, ctx.body, ctx.signature, rate=None, count=n,
                   connections=16, delivery_prefix=ctx.run_id(tag) + "-")
    if r.ok != n:
        raise BenchError(f"loading {n} events: only {r.ok} answered 2xx ({r.statuses}, "
                         f"{r.socket_errors} socket errors)")
    return r


def check_complete(ctx: Ctx, name: str, done: int, n: int, elapsed: float) -> None:
    """A throughput run that ran out of its time budget still measured a rate (done events
    over the elapsed time); the smoke run, whose budget is generous, demands all of them."""
    if done == 0 or (ctx.args.smoke and done < n):
        raise BenchError(f"{name}: {done} of {n} events done after {elapsed:.0f} s")
    if done < n:
        log(f"{name}: time budget ({ctx.args.worker_budget:.0f} s) used up with {done} of {n} "
            f"events done; events/s is measured over those")


def bench_worker_embedded(ctx: Ctx) -> dict:
    n = ctx.args.worker_events
    data = ctx.work / "data" / "worker-embedded"
    shutil.rmtree(data, ignore_errors=True)
    cfg = ctx.write_config("worker-embedded", hookline_toml("embedded", data))
    ingest = ctx.hookline_service("worker-embedded-ingest", "ingest", cfg).start()
    try:
        load = load_events(ctx, ingest.port, n, "wa")
    finally:
        ingest.stop()
    queued = count_rows(data / "queue.sqlite3", "messages")
    log(f"worker-embedded: {load.ok} events enqueued in {load.elapsed_s:.1f} s; queue holds {queued}")
    worker = ctx.hookline_service("worker-embedded", "worker", cfg).start()
    try:
        rows, elapsed = wait_rows(data / "warehouse.sqlite3", n, ctx.args.worker_budget, worker)
        cpu = worker.cpu_seconds()
        rss = worker.peak_rss_mb()
    finally:
        worker.stop()
    conn = sqlite3.connect(str(data / "warehouse.sqlite3"))
    lo, hi = conn.execute("SELECT min(inserted_at), max(inserted_at) FROM events").fetchone()
    conn.close()
    span = parse_ts(hi) - parse_ts(lo) if lo and hi else 0
    res = {
        "events": n, "rows": rows, "complete": rows >= n, "elapsed_s": elapsed,
        "events_per_s": rows / elapsed if elapsed else 0,
        "steady_events_per_s": (rows - 1) / span if span > 0 else None,
        "peak_rss_mb": rss, "cpu_s_per_1k": cpu / rows * 1000 if rows else None,
        "ready_ms": worker.ready_ms, "ingest_ready_ms": ingest.ready_ms,
        "load_rps": load.achieved_rps,
    }
    log(f"worker-embedded: {rows}/{n} rows in {elapsed:.2f} s = {res['events_per_s']:.0f} events/s, "
        f"peak RSS {rss:.1f} MB")
    check_complete(ctx, "worker-embedded", rows, n, elapsed)
    return res


def bench_worker_lag(ctx: Ctx) -> dict:
    rate, secs = ctx.args.lag_rate, ctx.args.lag_seconds
    data = ctx.work / "data" / "worker-lag"
    shutil.rmtree(data, ignore_errors=True)
    cfg = ctx.write_config("worker-lag", hookline_toml("embedded", data))
    ingest = ctx.hookline_service("worker-lag-ingest", "ingest", cfg).start()
    worker = ctx.hookline_service("worker-lag-worker", "worker", cfg).start()
    try:
        hr = paced(ctx, ingest.port, rate, secs, "lag")
        rows, _ = wait_rows(data / "warehouse.sqlite3", hr["ok"], 120, worker)
        worker_rss, ingest_rss = worker.peak_rss_mb(), ingest.peak_rss_mb()
    finally:
        worker.stop()
        ingest.stop()
    conn = sqlite3.connect(str(data / "warehouse.sqlite3"))
    lags = [parse_ts(done) - parse_ts(ts)
            for ts, done in conn.execute("SELECT ts, inserted_at FROM events")]
    conn.close()
    res = {
        "offered_rps": rate, "achieved_rps": hr["achieved_rps"], "seconds": secs,
        "sent": hr["count"], "ok": hr["ok"], "errors": hr["errors"], "rows": rows,
        "complete": rows >= hr["ok"],
        "lag_p50_ms": sender.percentile(lags, 50) * 1000,
        "lag_p99_ms": sender.percentile(lags, 99) * 1000,
        "lag_max_ms": max(lags) * 1000 if lags else float("nan"),
        "ingest_p99_ms": hr["p99_ms"],
        "worker_peak_rss_mb": worker_rss, "ingest_peak_rss_mb": ingest_rss,
    }
    log(f"worker-lag: {rows} rows, lag p50 {res['lag_p50_ms']:.0f} ms, p99 {res['lag_p99_ms']:.0f} ms, "
        f"max {res['lag_max_ms']:.0f} ms")
    if not res["complete"] or hr["errors"]:
        raise BenchError(f"worker-lag: {rows} rows of {hr['ok']} accepted, {hr['errors']} errors")
    return res


def metric(text: str, name: str, labels: str) -> float:
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def bench_worker_pubsub(ctx: Ctx) -> dict:
    n = ctx.args.emulator_events
    warm_pubsub(ctx)
    s = ctx.nonce
    names = {"topic": f"bench-events-{s}", "subscription": f"bench-worker-{s}",
             "dead_letter_topic": f"bench-dead-{s}", "dead_letter_subscription": f"bench-dead-ops-{s}",
             "bucket": f"bench-archive-{s}", "dataset": f"bench_{s}"}
    cfg = ctx.write_config("worker-pubsub", hookline_toml("gcp", project=ctx.emulators.project,
                                                          names=names))
    ctx.provision(cfg)
    try:
        ingest = ctx.hookline_service("worker-pubsub-ingest", "ingest", cfg, gcp=True).start()
        try:
            load = load_events(ctx, ingest.port, n, "wp")
        finally:
            ingest.stop()
        log(f"worker-pubsub: {n} events published in {load.elapsed_s:.1f} s")
        worker = ctx.hookline_service("worker-pubsub", "worker", cfg, gcp=True).start()
        try:
            url = f"http://127.0.0.1:{worker.port}/metrics"
            deadline = time.perf_counter() + ctx.args.worker_budget
            acked = dead = nacked = 0
            while time.perf_counter() < deadline:
                text = http_text(url)
                acked = metric(text, "hookline_messages_total", 'outcome="ack"')
                dead = metric(text, "hookline_messages_total", 'outcome="dead_letter"')
                nacked = metric(text, "hookline_messages_total", 'outcome="nack"')
                if acked + dead >= n:
                    break
                worker.check_alive()
                time.sleep(0.1)
            elapsed = time.perf_counter() - worker.spawned_at
            cpu, rss = worker.cpu_seconds(), worker.peak_rss_mb()
        finally:
            worker.stop()
    finally:
        try:
            ctx.emulators.delete_subscription(names["subscription"])
        except Exception:  # noqa: BLE001 - best effort: frees the emulator's memory
            pass
    res = {
        "events": n, "acked": int(acked), "dead_lettered": int(dead), "nacked": int(nacked),
        "complete": acked >= n, "elapsed_s": elapsed, "events_per_s": acked / elapsed,
        "peak_rss_mb": rss, "cpu_s_per_1k": cpu / acked * 1000 if acked else None,
        "ready_ms": worker.ready_ms, "ingest_ready_ms": ingest.ready_ms,
        "load_rps": load.achieved_rps,
    }
    log(f"worker-pubsub: {int(acked)}/{n} acked in {elapsed:.1f} s = {res['events_per_s']:.0f} events/s "
        f"(nack {int(nacked)}, dead {int(dead)}), peak RSS {rss:.1f} MB")
    check_complete(ctx, "worker-pubsub", int(acked), n, elapsed)
    return res


# --------------------------------------------------------------------------- report --


def cmd_out(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return "n/a"


def machine_info(ctx: Ctx) -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = mem_total_kb()
    os_name = "unknown"
    try:
        os_name = re.search(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text()).group(1)
    except (OSError, AttributeError):
        pass
    pip = VENV / "bin" / "python"
    pyver = lambda mod: cmd_out([str(pip), "-c", f"import importlib.metadata as m; print(m.version('{mod}'))"]) if pip.exists() else "n/a"  # noqa: E731
    loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    commit = cmd_out(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"])
    # BENCHMARKS.md itself is rewritten by every run: not a change to what is measured.
    dirty = cmd_out(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no",
                     "--", ".", ":!BENCHMARKS.md"])
    binary = ctx.hookline
    mtime = dt.datetime.fromtimestamp(binary.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return {
        "nproc": NPROC, "loadavg": loadavg, "cpu": cpu, "mem_gib": mem_kb / 1024 / 1024, "kernel": platform.release(),
        "os": os_name,
        "wrk": cmd_out(["wrk", "-v"]).splitlines()[0] if shutil.which("wrk") else "n/a",
        "webhook": cmd_out(["webhook", "-version"]) if shutil.which("webhook") else "n/a",
        "python": platform.python_version(),
        "gunicorn": pyver("gunicorn"), "flask": pyver("flask"),
        "google-cloud-pubsub": pyver("google-cloud-pubsub"),
        "pubsub_emulator": cmd_out(["dpkg-query", "-W", "-f=${Version}",
                                    "google-cloud-cli-pubsub-emulator"]),
        "pubsub_emulator_collector": ctx.emulators.collector,
        "hookline_commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "hookline_binary": f"{binary.relative_to(REPO) if binary.is_relative_to(REPO) else binary} "
                           f"(built {mtime})",
        "hookline_version": cmd_out([str(binary), "--version"]),
        "payload_bytes": len(ctx.body),
    }


def f_num(v, digits=0, unit=""):
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    return f"{v:,.{digits}f}{unit}"


def worst_row(label, measured, limit, unit, word):
    """A target row judged on the worst of (name, value) pairs: 'n/a' when none ran."""
    if not measured:
        return (label, "n/a", "n/a")
    name, value = max(measured, key=lambda x: x[1])
    return (label, f"{f_num(value, 1)} {unit} ({word}: {name})", verdict(value <= limit))


def verdict(ok) -> str:
    return "n/a" if ok is None else ("**PASS**" if ok else "**MISS**")


def targets(R: dict) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows; None where a contender was not run."""
    g = lambda n, k: (R.get(n) or {}).get(k)  # noqa: E731
    rows = []

    def ceiling_note() -> str:
        ceiling = pubsub_ceiling(R, (R.get("pubsub-floor") or {}).get("connections", 32))
        if not ceiling or not g("flask-seed", "rps"):
            return ""
        return (f"; the emulator's own cost caps (3) at {f_num(ceiling[2])} req/s here, "
                f"{ceiling[2] / g('flask-seed', 'rps'):.1f}× (4)")

    def ratio_row(target, a, b, k, minimum, extra=None):
        va, vb = g(a, "rps"), g(b, "rps")
        if va is None or vb is None or not vb:
            rows.append((target, "n/a", "n/a"))
            return
        ratio = va / vb
        ok = ratio >= minimum
        text = f"{ratio:.2f}× ({f_num(va)} vs {f_num(vb)} req/s)"
        if extra:
            t2, ok2 = extra()
            text += "; " + t2
            ok = ok and ok2
        rows.append((target, text, verdict(ok)))

    ratio_row("(3) ≥ 10× requests/s of (4), at equal or better p99", "hookline-pubsub",
              "flask-seed", "rps", 10,
              lambda: (f"p99 {f_num(g('hookline-pubsub', 'p99_ms'), 2)} vs "
                       f"{f_num(g('flask-seed', 'p99_ms'), 2)} ms" + ceiling_note(),
                       (g("hookline-pubsub", "p99_ms") or 1e9) <= (g("flask-seed", "p99_ms") or 0)))
    ratio_row("(2) ≥ 50% of (1) requests/s", "hookline-embedded", "hookline-null", "rps", 0.5)
    ratio_row("(2) ≥ 3× requests/s of (5)", "hookline-embedded", "webhook", "rps", 3)
    for name, limit in (("hookline-embedded", 5), ("hookline-pubsub", 25)):
        hr = g(name, "half_rate")
        if hr:
            # Requests that left late (every connection busy) waited in a queue wrk does not
            # time: past 1% of them, the p99 understates and cannot pass.
            late = hr["late"] / hr["requests"] if hr["requests"] else 0
            note = f"; {late:.0%} sent late, so p99 understates" if late > 0.01 else ""
            rows.append((f"{LABEL[name][:3]} p99 at half of max sustainable rate ≤ {limit} ms",
                         f"{f_num(hr['p99_ms'], 2)} ms at {f_num(hr['achieved_rps'])} req/s{note}",
                         verdict(hr["p99_ms"] <= limit and hr["errors"] == 0 and late <= 0.01)))
        else:
            rows.append((f"{LABEL[name][:3]} p99 at half of max sustainable rate ≤ {limit} ms", "n/a", "n/a"))
    we = R.get("worker-embedded")
    rows.append(("Worker, embedded sinks ≥ 2,000 events/s",
                 f"{f_num(we['events_per_s'])} events/s" if we else "n/a",
                 verdict(we["events_per_s"] >= 2000) if we else "n/a"))
    wl = R.get("worker-lag")
    rows.append((f"Worker lag p99 ≤ 1 s at 500 events/s offered",
                 f"{f_num(wl['lag_p99_ms'])} ms at {f_num(wl['achieved_rps'])} events/s" if wl else "n/a",
                 verdict(wl["lag_p99_ms"] <= 1000) if wl else "n/a"))
    ingest_rss = [(n, g(n, "peak_rss_mb")) for n in ("hookline-null", "hookline-embedded", "hookline-pubsub")
                  if g(n, "peak_rss_mb") is not None]
    if wl:
        ingest_rss.append(("worker-lag ingest", wl["ingest_peak_rss_mb"]))
    rows.append(worst_row("Peak RSS under load, ingest ≤ 40 MB", ingest_rss, 40, "MB", "highest"))
    worker_rss = [(k, v) for k, v in (("worker-embedded", we and we["peak_rss_mb"]),
                                      ("worker-lag", wl and wl["worker_peak_rss_mb"]),
                                      ("worker-pubsub", (R.get("worker-pubsub") or {}).get("peak_rss_mb")))
                  if v is not None]
    rows.append(worst_row("Peak RSS under load, worker ≤ 80 MB", worker_rss, 80, "MB", "highest"))
    ready = [(n, g(n, "ready_ms")) for n in ("hookline-null", "hookline-embedded") if g(n, "ready_ms")]
    if we:
        ready.append(("worker (embedded)", we["ready_ms"]))
    rows.append(worst_row("Start → ready ≤ 100 ms (embedded)", ready, 100, "ms", "slowest"))
    return rows


def kept_section(path: Path, heading: str) -> str | None:
    """The hand-written body of `heading` in the previous file, so regenerating the numbers
    does not erase the analysis (review it against the new figures)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    m = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    body = m.group(1).strip() if m else ""
    return body if body and body != "(filled in by hand after profiling)" else None


def render(ctx: Ctx, info: dict, R: dict, failures: dict, started: float, finished: float) -> str:
    a = ctx.args
    L = []
    add = L.append
    title = "# Benchmarks" if not a.smoke else "# Benchmark smoke run (not for quoting)"
    add(title)
    add("")
    add("Generated by `bench/run.sh` (`bench/run.py`); do not edit by hand — rerun it. "
        f"Run {dt.datetime.fromtimestamp(started, dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{(finished - started) / 60:.1f} min.")
    add("")
    add("Every figure below comes from one run on one machine, contenders side by side. "
        "Absolute numbers on a 2-core machine are noisy; **the ratios are what we quote**.")
    add("")
    if "debug" in info["hookline_binary"]:
        add("> **Warning: measured with a debug build of hookline.** Rerun with a release build.")
        add("")
    if failures:
        add("> **Failures in this run:** " + "; ".join(f"`{k}`: {v.splitlines()[0]}" for k, v in failures.items()))
        add("")
    add("## Machine")
    add("")
    add("| | |")
    add("| --- | --- |")
    for k, v in [
        ("CPUs (nproc)", info["nproc"]), ("Load average when the run started", info["loadavg"]), ("CPU", info["cpu"]), ("Memory", f"{info['mem_gib']:.1f} GiB"),
        ("OS / kernel", f"{info['os']} / {info['kernel']}"), ("hookline", f"{info['hookline_version']}, commit "
         f"{info['hookline_commit']}, {info['hookline_binary']}"),
        ("wrk", info["wrk"]), ("webhook", info["webhook"]),
        ("Python / gunicorn / Flask / google-cloud-pubsub",
         f"{info['python']} / {info['gunicorn']} / {info['flask']} / {info['google-cloud-pubsub']}"),
        ("Pub/Sub emulator", f"google-cloud-cli-pubsub-emulator {info['pubsub_emulator']}; JVM "
                             f"collector {info.get('pubsub_emulator_collector', 'n/a')}"),
        ("Cloud Storage / BigQuery emulators", "fake-gcs-server 1.54.0 / bqemulator 1.4.0 (scripts/emulators.sh)"),
    ]:
        add(f"| {k} | {v} |")
    add("")
    add("## Method")
    add("")
    add(f"- **Workload**: `bench/payloads/issues-opened.json`, a GitHub `issues` `opened` event "
        f"({info['payload_bytes']:,} bytes, compact JSON as GitHub sends it, full issue, repository, "
        "organization and sender objects), signed like GitHub: `X-Hub-Signature-256: sha256=<hex "
        "HMAC-SHA256 of the body>`, with `X-GitHub-Event: issues` and a unique `X-GitHub-Delivery` "
        "per request. Every contender verifies the signature.")
    add(f"- **Load**: `wrk` (Debian's package) with `bench/wrk/signed_post.lua`, {a.connections} "
        f"keep-alive connections and {max(1, min(NPROC, a.connections))} threads for every contender; "
        f"{a.warmup} s warm-up (discarded; {a.emulator_warmup} s for (3) and (4), see the emulator's "
        f"warm-up below), then {a.reps} × {a.duration} s; the tables give the "
        "**median** of the repetitions (errors: the sum). wrk runs on the same cores as the "
        "contender (and, for (3) and (4), the Pub/Sub emulator): on 2 cores everything competes "
        "for CPU, which is why only ratios from the same run mean anything.")
    add("- **requests/s**: 2xx answers per second. **Errors**: non-2xx answers (wrk's "
        "`errors.status`, every status ≥ 400; no contender sends 1xx/3xx) plus socket errors and "
        "timeouts (10 s).")
    add("- **Latency**: wrk's percentiles (p50, p99, p99.9) of each repetition; median over repetitions.")
    add("- **Peak RSS**: `VmHWM` from `/proc/PID/status` at the end of the measured repetitions "
        "(so under load): the server process for hookline and webhook (whose `/bin/true` children "
        "live a millisecond); for gunicorn the sum over master and workers (shared pages counted "
        "once per process, so a slight overestimate).")
    add("- **CPU-s per 1,000 requests**: utime + stime of the contender's whole process tree, plus "
        "what its reaped children used (cutime + cstime: webhook's commands, gunicorn's workers), "
        "over the measured repetitions, divided by the 2xx answers. The Pub/Sub emulator's own CPU "
        "is given separately for (3) and (4): on Cloud Run that work is Pub/Sub's, not billed "
        "to the service, but here it runs on the same 2 cores and bounds (3) and (4).")
    add("- **Start → ready**: from spawning the process until the first 200 on its ready URL, "
        "polled every 1 ms (hookline: `GET /readyz`, which for ingest also checks the queue; "
        "gunicorn: `GET /healthz` of the app, answered once a worker has loaded it; webhook: `GET /`). "
        "Before the first measurement the harness writes every dirty page back (`sync`): the build "
        "`bench/run.sh` just made was otherwise written back about 30 s later, in front of (2)'s "
        "first syncs (its first start took ~200 ms that way, against ~12 ms after a `sync`).")
    add("- **p99 at half of max sustainable rate** ((2) and (3)): wrk paced by the same Lua script "
        "(`BENCH_RATE`): each wrk thread keeps an absolute schedule, request *k* due at *k* × "
        "threads / rate, and a connection that comes free waits for the next due slot, so arrivals "
        "follow the schedule whatever the latency while a connection is free (wrk2's open loop, at "
        "wrk's 1 ms timer resolution). Offered: half of the median requests/s measured above, for "
        f"{a.duration} s, {a.paced_connections} connections, after the repetitions, from an empty queue "
        "like each of them. wrk times a request from when it is written; *sent late* counts requests that "
        "left more than 1 ms after their due time (every connection busy, or wrk's thread not getting "
        "the CPU in time: queueing wrk's latency does not include), with the worst lateness; over 1% "
        "late fails the target, since the p99 then understates. The paced runs have more "
        "connections than the closed-loop ones so that a stall of the service delays the "
        "requests in flight, which the p99 shows, rather than the sending of the next ones, "
        "which it would hide: alternating 32 and 256 connections on 2026-11-24, (2) had 1,727 "
        "and 64 requests sent late with 32 (p99 9.25 and 5.20 ms), none with 256 (5.56 and "
        "4.43 ms); (3) 227 and 579 late with 32 (p99 7.29 and 7.03 ms), 266 and none with 256 "
        "(16.77 and 11.94 ms: the stalls 32 connections hid as lateness).")
    add("- **Worker throughput, embedded sinks**: a fresh data directory; ingest alone loads "
        f"{a.worker_events:,} events with unique delivery ids and stops; then `hookline worker` starts "
        "(embedded queue → local archive → SQLite warehouse → Slack, logged since no URL is set, "
        "idempotency ledger on) and the harness polls the warehouse's row count every 20 ms. "
        "events/s = rows / (seconds from spawning the worker to the last row); a run still "
        f"going after {a.worker_budget:g} s stops there and is measured over the rows done so far.")
    add(f"- **Enqueue → done lag**: ingest and worker together on a fresh data directory; paced, open-loop "
        f"sender `bench/sender.py` (Python asyncio, keep-alive; request *i* due at *i* / rate) offers {a.lag_rate:g} events/s for {a.lag_seconds:g} s; lag = `inserted_at − ts` of "
        "each warehouse row (ingest's receive time to the warehouse write, millisecond timestamps).")
    add(f"- **Worker throughput, emulator sinks**: the same as the embedded one with Pub/Sub, "
        f"Cloud Storage and BigQuery emulators ({a.emulator_events:,} events, fresh topic, "
        "subscription, bucket and dataset); done is counted from the worker's "
        "`hookline_messages_total{outcome=\"ack\"}`. **The emulators are slow and share the 2 "
        "cores: this measures the emulators more than the worker.**")
    add("- **Pub/Sub emulator warm-up**: before its first measurement the emulator (a JVM) takes "
        "66,000 unmeasured messages (`bench/pubsub_floor.py`, batches of 1 and 32): cold, it "
        "spends several times the CPU per message it spends once its JIT has compiled the "
        "publish path, and (3), the first contender to use it, would pay for what (4) gets warm. "
        "That is not all of it: after this and a 3 s warm-up, (3)'s repetitions on a fresh emulator "
        "still rose (4,766, 5,498, 7,387 requests/s in the run of 2026-11-24 12:43), so (3) and (4) "
        "also warm up longer on their own traffic (see Load); with 10 s, (3)'s first repetition "
        "was already at its level (7,935, 8,248, 8,760).")
    add("- **The Pub/Sub emulator's garbage collector**: the harness starts the emulator's JVM "
        f"with `{EMULATOR_JVM_OPTS}` (through `CLOUD_PUBSUB_EMULATOR_OPTS`, which its launcher "
        "passes to the JVM); the Machine table names the collector of the emulator measured (one "
        "already running is reused as it is, with a warning unless it runs ZGC). With G1, the "
        "JVM's default, the emulator stopped every 2-3 s for 35-46 ms (young collections copying "
        "the messages the undrained subscription holds; its GC log), and those stops were (3)'s "
        "p99: in two G1 runs on 2026-11-24 (3)'s half-rate p99 was 17.8 and 38.7 ms, with requests "
        "held back up to 35 and 72 ms, against 4.4-10.5 ms and at most 14 ms in three ZGC runs "
        "alternating with them, at equal or higher requests/s. Real Pub/Sub's pauses are not on "
        "the service's path; (4) runs against the same emulator. The heap is fixed (4 GB; a quarter "
        "of the memory on a machine with less than 16 GB) and "
        "touched at start: with ZGC alone it grew past 3 GB before a collection, and in 2 of 3 "
        "runs one of (3)'s repetitions then fell by a third and its half-rate run had requests "
        "held back 72 and 199 ms, with no pause or allocation stall in the GC log (memory this "
        "VM hands out on first touch, we suspect); in 5 runs with a heap touched at start (3 or 4 "
        "GB), neither.")
    add("- **An empty queue for every measurement** ((2), (3) and (4); each repetition and the "
        "half-rate run): in production the worker drains the queue, so ingest publishes into a "
        "nearly empty one; nothing drains it here, and left alone it grows by every earlier "
        "repetition's messages (up to ~300,000 of 9.6 KB). That measured the backlog instead: the "
        "Pub/Sub emulator holds every undrained message in its JVM heap and spent 3× its own "
        "floor per message on garbage collection, with pauses that stalled every connection at "
        "once; the embedded queue's syncs got slower as its files grew, and (2)'s repetitions "
        "fell with each one (8,908, 6,207, 5,781 requests/s in the run of 2026-11-24 08:11). So "
        "(3) and (4) get their topic's subscription (the worker's, as deployed) deleted and "
        "provisioned again before each, and (2) a new process on a new data directory, warmed up "
        "again like the first. CPU figures cover the measured runs only; peak RSS is the highest "
        "of (2)'s processes. What a backlog costs is in \"What bounds the misses\".")
    add("- **Contender configurations**: hookline `RUST_LOG=warn`, `--log-format json`, defaults "
        f"otherwise (configs generated under `{ctx.work.relative_to(REPO)}/config/`). (1) `queue.backend = "
        "\"bench_discard\"` answers 200 after verification and throws the message away (benchmarks "
        "only). (2) the embedded queue answers after an fsync'd group commit. (3) answers after "
        "Pub/Sub returned a message id. (4) `bench/flask_seed/` — **comparison only, not part of "
        "hookline**: the seeds' Flask receiver (verify with `hmac.compare_digest`, "
        "`PublisherClient().publish(...).result()` with the client's default batch settings, then "
        "200) under gunicorn with 5 workers × 4 threads (`gthread`): gunicorn's documented "
        "(2 × cores) + 1 workers, with threads because each request mostly waits on Pub/Sub. (5) "
        "`webhook -template` with `bench/webhook/hooks.json`: a `payload-hmac-sha256` rule on "
        "`X-Hub-Signature-256` and `execute-command: /bin/true`. webhook answers 200 as soon as "
        "the rule matched and it has *started* the command in the background (its default; "
        "`include-command-output-in-response` would make it wait): nothing is stored, so (5) "
        "does less per request than (2).")
    add("")

    add("## Ingest: every contender")
    add("")
    add("| contender | requests/s | p50 ms | p99 ms | p99.9 ms | errors | peak RSS MB | CPU-s / 1,000 req | emulator CPU-s / 1,000 req | start → ready ms |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in INGEST:
        r = R.get(n)
        if r is None:
            add(f"| {LABEL[n]} | {'failed' if n in failures else 'not run'} | | | | | | | | |")
            continue
        add(f"| {LABEL[n]} | {f_num(r['rps'])} | {f_num(r['p50_ms'], 2)} | {f_num(r['p99_ms'], 2)} | "
            f"{f_num(r['p999_ms'], 2)} | {r['errors']} | {f_num(r['peak_rss_mb'], 1)} | "
            f"{f_num(r['cpu_s_per_1k'], 3)} | {f_num(r.get('emulator_cpu_s_per_1k'), 3)} | "
            f"{f_num(r['ready_ms'], 1)} |")
    add("")
    add("Each repetition (requests/s · p99 ms · errors):")
    add("")
    for n in INGEST:
        r = R.get(n)
        if r:
            reps = ", ".join(f"{x['rps']:,.0f} · {x['latency_us']['p99'] / 1000:.2f} · {x['errors_total']}"
                             for x in r["reps"])
            add(f"- {LABEL[n][:3]} {reps}")
    add("")
    add("### p99 at half of the maximum sustainable rate")
    add("")
    add("| contender | offered req/s | achieved req/s | p50 ms | p99 ms | p99.9 ms | errors | sent late (max behind) |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in ("hookline-embedded", "hookline-pubsub"):
        hr = (R.get(n) or {}).get("half_rate")
        if hr:
            add(f"| {LABEL[n]} | {f_num(hr['offered_rps'])} | {f_num(hr['achieved_rps'])} | "
                f"{f_num(hr['p50_ms'], 2)} | {f_num(hr['p99_ms'], 2)} | {f_num(hr['p999_ms'], 2)} | "
                f"{hr['errors']} | {hr['late']:,} of {hr['requests']:,} ({f_num(hr['max_behind_ms'], 1)} ms) |")
        else:
            add(f"| {LABEL[n]} | not run | | | | | | |")
    add("")

    add("### The Pub/Sub emulator's own cost per message")
    add("")
    fl = R.get("pubsub-floor")
    if fl:
        add("`bench/pubsub_floor.py` publishes the same payload to a topic of the emulator (with one "
            "subscription, as (3) and (4) have) in batches of exactly *batch* messages; the "
            "emulator's CPU over each is divided by the messages. It costs much per publish request "
            "and little per message in it.")
        add("")
        add("| batch | messages | emulator CPU-s / 1,000 messages | seconds |")
        add("| ---: | ---: | ---: | ---: |")
        for row in fl["batches"]:
            add(f"| {row['batch']:,} | {row['messages']:,} | {f_num(row['emulator_cpu_s_per_1k'], 3)} | "
                f"{f_num(row['seconds'], 1)} |")
        add("")
        ceiling = pubsub_ceiling(R, a.connections)
        if ceiling:
            floor, hookline, rps = ceiling
            add(f"With {a.connections} connections a publish of (3) carries at most {a.connections} "
                "messages (each request waits for its own message id). At that batch the emulator "
                f"alone needs {floor:.3f} CPU-s per 1,000 and hookline {hookline:.3f} (table above): "
                f"on {NPROC} cores, with nothing else running, (3) could not pass "
                f"{f_num(rps)} requests/s here.")
            add("")
    else:
        add("not run")
        add("")

    add("## Worker")
    add("")
    add("| measurement | events | events/s | peak RSS MB | CPU-s / 1,000 events | start → ready ms |")
    add("| --- | ---: | ---: | ---: | ---: | ---: |")
    we, wp = R.get("worker-embedded"), R.get("worker-pubsub")
    if we:
        steady = f" (steady state {f_num(we['steady_events_per_s'])})" if we.get("steady_events_per_s") else ""
        done = f"{we['rows']:,}" + ("" if we["complete"] else f" of {we['events']:,} (time budget)")
        add(f"| embedded sinks (queue → archive → SQLite warehouse → Slack log) | {done} | "
            f"{f_num(we['events_per_s'])}{steady} | {f_num(we['peak_rss_mb'], 1)} | "
            f"{f_num(we['cpu_s_per_1k'], 3)} | {f_num(we['ready_ms'], 1)} |")
    else:
        add(f"| embedded sinks | {'failed' if 'worker-embedded' in failures else 'not run'} | | | | |")
    if wp:
        done = f"{wp['acked']:,}" + ("" if wp["complete"] else f" of {wp['events']:,} (time budget)")
        add(f"| emulator sinks (Pub/Sub → GCS → BigQuery emulators; slow, see method) | {done} | "
            f"{f_num(wp['events_per_s'])} | {f_num(wp['peak_rss_mb'], 1)} | {f_num(wp['cpu_s_per_1k'], 3)} | "
            f"{f_num(wp['ready_ms'], 1)} |")
    else:
        add(f"| emulator sinks | {'failed' if 'worker-pubsub' in failures else 'not run'} | | | | |")
    add("")
    wl = R.get("worker-lag")
    add("### Enqueue → done lag (embedded)")
    add("")
    if wl:
        add("| offered events/s | achieved events/s | rows | lag p50 ms | lag p99 ms | lag max ms | ingest p99 ms (open loop) | worker peak RSS MB | ingest peak RSS MB |")
        add("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        add(f"| {f_num(wl['offered_rps'])} | {f_num(wl['achieved_rps'])} | {wl['rows']:,} | "
            f"{f_num(wl['lag_p50_ms'])} | {f_num(wl['lag_p99_ms'])} | {f_num(wl['lag_max_ms'])} | "
            f"{f_num(wl['ingest_p99_ms'], 2)} | {f_num(wl['worker_peak_rss_mb'], 1)} | "
            f"{f_num(wl['ingest_peak_rss_mb'], 1)} |")
    else:
        add("failed" if "worker-lag" in failures else "not run")
    add("")

    add("## Start → ready")
    add("")
    add("| service | ms |")
    add("| --- | ---: |")
    for n in INGEST:
        if R.get(n):
            add(f"| {LABEL[n]} | {f_num(R[n]['ready_ms'], 1)} |")
    if we:
        add(f"| hookline worker, embedded | {f_num(we['ready_ms'], 1)} |")
    if wp:
        add(f"| hookline worker, Pub/Sub emulator | {f_num(wp['ready_ms'], 1)} |")
    add("")

    add("## Targets (ratios from this run)")
    add("")
    add("| target | measured | |")
    add("| --- | --- | --- |")
    for t, m, v in targets(R):
        add(f"| {t} | {m} | {v} |")
    add("")
    add("## What bounds the misses")
    add("")
    add(kept_section(a.output, "## What bounds the misses") or "(filled in by hand after profiling)")
    add("")
    add("## Reproduce")
    add("")
    add("```sh")
    add("bench/run.sh                      # the whole comparison; rewrites BENCHMARKS.md (~5 min)")
    add("bench/run.sh --smoke              # ~1 s per contender; writes target/bench/smoke.md")
    add("bench/run.sh --only hookline-embedded,webhook --duration 20 --reps 5")
    add("python3 bench/run.py --render-only   # rewrite this file from target/bench/results.json")
    add("```")
    add("")
    add("`bench/run.sh` installs what is missing (Debian's `wrk` and `webhook`, a venv with "
        "`bench/requirements.txt` under `target/bench/venv`, the emulators via "
        "`scripts/emulators.sh install`), builds hookline with `cargo build --release --locked` "
        "(set `HOOKLINE_BIN` to use another binary) and runs `bench/run.py`. This run:")
    add("")
    add("```sh")
    add(ctx.args.command_line)
    add("```")
    add("")
    add(f"Logs of every process: `{shown(ctx.logs)}/`; every raw figure: `{shown(ctx.results_path)}`.")
    add("")
    return "\n".join(L)


# ----------------------------------------------------------------------------- main --


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="about 1-2 s per contender, 1 repetition; writes target/bench/smoke.md; "
                        "exits non-zero on any error, failed start or zero successful requests")
    p.add_argument("--duration", type=int, help="seconds per measured repetition (default 10; smoke 1)")
    p.add_argument("--warmup", type=int, help="warm-up seconds (default 3; smoke 1)")
    p.add_argument("--emulator-warmup", type=int,
                   help="warm-up seconds of (3) and (4), whose path runs through the Pub/Sub "
                        "emulator's JVM (default 10; smoke 1)")
    p.add_argument("--reps", type=int, help="repetitions (default 3; smoke 1)")
    p.add_argument("--connections", type=int, default=32, help="connections, same for every contender (32)")
    p.add_argument("--paced-connections", type=int, default=256,
                   help="connections of the paced half-rate runs (256: enough that a stall "
                        "delays requests instead of their sending)")
    p.add_argument("--only", help="comma-separated: " + ",".join(ALL))
    p.add_argument("--worker-events", type=int, help="events for the embedded worker run (20000; smoke 300)")
    p.add_argument("--emulator-events", type=int, help="events for the emulator worker run (500; smoke 100)")
    p.add_argument("--lag-seconds", type=float, help="seconds of paced load for the lag run (20; smoke 2)")
    p.add_argument("--lag-rate", type=float, default=500, help="events/s offered in the lag run (500)")
    p.add_argument("--worker-budget", type=float,
                   help="seconds a worker throughput run may take; events/s is then measured over "
                        "the rows done so far (default 60; smoke 60, where all must be done)"),
    p.add_argument("--hookline", default=os.environ.get("HOOKLINE_BIN"),
                   help="the hookline binary (default $HOOKLINE_BIN, else target/release/hookline)")
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: rewrite the report from the last run's results.json "
                        "(smoke.json with --smoke; with --output X.md, X.json)")
    p.add_argument("--output", help="markdown file (default BENCHMARKS.md; smoke target/bench/smoke.md)")
    a = p.parse_args(argv)
    defaults = dict(duration=(1, 10), warmup=(1, 3), emulator_warmup=(1, 10), reps=(1, 3),
                    worker_events=(300, 20000),
                    emulator_events=(100, 500), lag_seconds=(2, 20), worker_budget=(60, 60))
    for k, (smoke, full) in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, smoke if a.smoke else full)
    if a.hookline is None:
        rel, deb = REPO / "target/release/hookline", REPO / "target/debug/hookline"
        a.hookline = str(rel if rel.exists() or not deb.exists() else deb)
    if not Path(a.hookline).exists():
        p.error(f"no hookline binary at {a.hookline}: cargo build --release (or set HOOKLINE_BIN)")
    a.output = Path(a.output) if a.output else (WORK_ROOT / "smoke.md" if a.smoke else REPO / "BENCHMARKS.md")
    a.selected = [n for n in ALL if n in a.only.split(",")] if a.only else list(ALL)
    unknown = set(a.only.split(",")) - set(ALL) if a.only else set()
    if unknown:
        p.error(f"unknown names in --only: {', '.join(sorted(unknown))} (known: {', '.join(ALL)})")
    if a.reps < 1 or a.duration < 1 or a.connections < 1 or a.paced_connections < 1:
        p.error("--reps, --duration, --connections and --paced-connections must be at least 1")
    a.command_line = os.environ.get("BENCH_COMMAND_LINE") or "python3 bench/run.py " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    return a


RENDER_ARGS = ("duration", "warmup", "emulator_warmup", "reps", "connections", "worker_events",
               "emulator_events", "lag_seconds", "lag_rate", "worker_budget", "command_line")


def shown(path: Path) -> Path:
    """`path` relative to the repository when it is inside it."""
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def render_only(ctx: Ctx) -> int:
    """Rewrites the report from the last run's raw figures (after editing the template)."""
    data = json.loads(ctx.results_path.read_text())
    for k in RENDER_ARGS:
        v = data["args"].get(k)
        if isinstance(v, str) and k != "command_line":
            v = float(v) if "." in v else int(v)
        if v is not None:
            setattr(ctx.args, k, v)
    mtime = ctx.results_path.stat().st_mtime
    ctx.args.output.write_text(render(ctx, data["machine"], data["results"], data["failures"],
                                      data.get("started", mtime), data.get("finished", mtime)))
    log(f"rewrote {ctx.args.output} from {ctx.results_path}")
    return 0


def set_aside(ctx: Ctx) -> None:
    """Moves the previous run's work folder out of the way instead of deleting it now.

    Why: this machine's root file system is ext4 mounted without a journal, and there ext4
    will not reuse an inode freed in the last 60 s (300 s more while its inode table block is
    dirty): `recently_deleted()` in ext4's ialloc.c, checked only without a journal. Each new
    file then scans past the freed ones. Deleting the previous run's archives (tens of
    thousands of files) right before the worker benchmarks put 30% of their samples in that
    scan. A rename frees nothing; the folder is deleted after the measurements.
    """
    if ctx.work.exists():
        ctx.work.rename(WORK_ROOT / f"{SET_ASIDE_PREFIX}{time.time_ns()}")


def write_back_first() -> None:
    """Writes every dirty page of the machine to disk before the first measurement.

    Why: `bench/run.sh` builds hookline just before (a 180 MB binary and its crates), and the
    kernel starts writing that back about 30 s later, when (2) starts. Its first syncs then
    queued behind the build's writeback: (2)'s first start took 187.5 and 212.6 ms in the
    full runs of 2026-11-25 (8-13 ms for the starts after it), and 207.9 ms against 12.2 ms
    with a `sync` after the build in an A/B of the same sequence. Costs well under a second.
    """
    t0 = time.perf_counter()
    os.sync()
    log(f"wrote back the page cache's dirty data in {time.perf_counter() - t0:.2f} s")


def delete_set_aside() -> None:
    for old in WORK_ROOT.glob(f"{SET_ASIDE_PREFIX}*"):
        shutil.rmtree(old, ignore_errors=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = Ctx(args)
    if args.render_only:
        return render_only(ctx)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    set_aside(ctx)
    ctx.logs.mkdir(parents=True, exist_ok=True)
    write_back_first()
    started = time.time()
    log(f"hookline binary {ctx.hookline}; selected: {', '.join(args.selected)}; "
        f"{args.reps} × {args.duration} s after {args.warmup} s warm-up ({args.emulator_warmup} s through "
        f"the emulator), {args.connections} connections")
    R: dict[str, dict] = {}
    failures: dict[str, str] = {}
    steps = {n: (lambda n=n: bench_ingest(ctx, n)) for n in INGEST}
    steps.update({"pubsub-floor": lambda: bench_pubsub_floor(ctx),
                  "worker-embedded": lambda: bench_worker_embedded(ctx),
                  "worker-lag": lambda: bench_worker_lag(ctx),
                  "worker-pubsub": lambda: bench_worker_pubsub(ctx)})
    try:
        for name in args.selected:
            log(f"=== {name}")
            try:
                R[name] = steps[name]()
            except (BenchError, OSError, subprocess.SubprocessError, sqlite3.Error,
                    urllib.error.URLError, ValueError, KeyError) as e:
                failures[name] = f"{type(e).__name__}: {e}"
                log(f"{name} FAILED: {e}")
                if not isinstance(e, BenchError):
                    traceback.print_exc()
            finally:
                stop_all()
            time.sleep(0 if args.smoke else 2)  # let the machine settle between contenders
    finally:
        stop_all()
        if ctx.gcp_provisioned and not ctx.emulators.started:
            try:  # reused emulators: drop the backlog the ingest benchmarks left
                ctx.emulators.delete_subscription(GCP_INGEST_NAMES["subscription"])
            except Exception:  # noqa: BLE001 - best effort
                pass
        ctx.emulators.stop()
    finished = time.time()
    delete_set_aside()

    # Smoke: every ingest contender must have answered, without a single error.
    if args.smoke:
        for n, r in R.items():
            if n in INGEST:
                if r["ok_total"] == 0:
                    failures[n] = "no successful request"
                elif r["errors"] or (r.get("half_rate") or {}).get("errors"):
                    failures[n] = f"{r['errors'] + (r.get('half_rate') or {}).get('errors', 0)} errors"

    info = machine_info(ctx)
    results_path = ctx.results_path
    stored_args = {k: (v if isinstance(v, (int, float, str, bool, list, type(None))) else str(v))
                   for k, v in vars(args).items()}
    results_path.write_text(json.dumps({"machine": info, "args": stored_args, "started": started,
                                        "finished": finished, "results": R, "failures": failures},
                                       indent=2))
    args.output.write_text(render(ctx, info, R, failures, started, finished))
    log(f"wrote {args.output} and {results_path} ({(finished - started):.0f} s)")
    for t, m, v in targets(R):
        log(f"  {v.strip('*'):4}  {t}: {m}")
    if failures:
        for n, why in failures.items():
            log(f"FAILED {n}: {why.splitlines()[0]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
