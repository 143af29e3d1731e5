#!/usr/bin/env python3
"""What this machine's disk charges for the embedded queue's two syncs per batch.

Each batch of publishes appends its bodies to a segment file and `fdatasync`s it, then
SQLite's COMMIT writes the rows' WAL frames and `fsync`s the WAL. This times those two
syncs, and the alternatives a redesign could use, without hookline in the way:

  append       bodies appended to a new file, fdatasync (what a segment costs today)
  overwrite    the same bytes over blocks already written, fdatasync (a recycled segment)
  fallocated   into space reserved with fallocate, fdatasync
  wal          a WAL-sized write over written blocks, fsync
  both         append then wal, one after the other (today's batch)
  both-at-once append and wal on two threads at the same time
  syncfs       both writes, then one syncfs of the file system

    python3 bench/sync_latency.py [--dir target/sync-latency] [--syncs 400] [--rounds 2]
                                  [--body-kib 130] [--wal-kib 48]
                                  [--beside-load [--hookline target/release/hookline]]

--beside-load times the same syncs while `hookline ingest` on the null queue takes wrk's load
(as contender (1) does: 32 connections, the harness's signed POST, no disk): on this VM a
sync takes longer while the CPUs are busy, and (2) keeps them busy itself (BENCHMARKS.md,
tenth session). Run it once without and once with the flag to compare.

The defaults are a batch as measured under (2)'s full load on 2026-11-24 (about 13
publishes of 9.6 KB, 36-73 KB of WAL frames). Prints p50, p90 and the mean per mode and
round; deletes its files at the end. Used in BENCHMARKS.md (ninth session).
"""
import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

LIBC = ctypes.CDLL(None, use_errno=True)
WAL_FILE = 4 << 20  # a WAL that is overwritten in place, as SQLite's is once restarted


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default="target/sync-latency")
    p.add_argument("--syncs", type=int, default=400, help="batches per mode and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--body-kib", type=int, default=130)
    p.add_argument("--wal-kib", type=int, default=48)
    p.add_argument("--beside-load", action="store_true",
                   help="measure while hookline ingest (null queue) takes wrk's load")
    p.add_argument("--hookline", default="target/release/hookline",
                   help="the binary --beside-load runs")
    a = p.parse_args()
    with contextlib.ExitStack() as stack:
        if a.beside_load:
            stack.enter_context(cpu_load(Path(a.hookline)))
        return measure(a)


@contextlib.contextmanager
def cpu_load(hookline: Path):
    """`hookline ingest` on the null queue under wrk's closed-loop load (32 connections, the
    harness's signed POST) until the block ends: busy CPUs and no disk, as contender (1)."""
    import run  # bench/run.py: the harness's config, service and wrk settings

    if not hookline.is_file():
        raise SystemExit(f"{hookline} is missing: build it (cargo build --release) "
                         "or pass --hookline")
    with tempfile.TemporaryDirectory(prefix="sync-latency-load-") as tmp:
        config = Path(tmp) / "null.toml"
        config.write_text(run.hookline_toml("null"))
        port = run.free_port()
        argv = [str(hookline.resolve()), "--config", str(config), "ingest"]
        service = run.Service("sync-latency-ingest", argv,
                              run.clean_env({"PORT": str(port), "RUST_LOG": "warn"}), port,
                              "/readyz", Path(tmp))
        env = run.wrk_env(run.sign(run.PAYLOAD.read_bytes()), f"sync-latency-{os.getpid()}", 2)
        wrk = None
        try:
            service.start()
            wrk = subprocess.Popen(
                ["wrk", "-t2", "-c32", "-d3600s", "-s", str(run.LUA),
                 f"http://127.0.0.1:{port}{run.HOOK_PATH}"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(2)  # past wrk's connection set-up
            if wrk.poll() is not None:
                raise SystemExit(f"wrk exited with {wrk.returncode} before the measurement:\n"
                                 f"{wrk.stdout.read()[-2000:]}")
            print(f"beside load: {hookline} ingest (null queue) under wrk, 32 connections",
                  flush=True)
            yield
            service.check_alive()
            # wrk prints its summary (and the script's JSON line) when interrupted.
            wrk.send_signal(signal.SIGINT)
            out, _ = wrk.communicate(timeout=30)
            wrk = None
            line = next((l for l in out.splitlines() if l.startswith("BENCH_JSON ")), None)
            if line is None:
                raise SystemExit(f"wrk printed no summary:\n{out[-2000:]}")
            res = json.loads(line[len("BENCH_JSON "):])
            errors = sum(res["errors"].values())
            print(f"the load: {res['requests'] / (res['duration_us'] / 1e6):,.0f} requests/s, "
                  f"{errors} errors", flush=True)
            if errors:
                raise SystemExit("the load had errors: it was not (1)'s")
        finally:
            if wrk is not None:
                wrk.kill()
                wrk.wait()
            service.stop()


def measure(a: argparse.Namespace) -> int:
    os.makedirs(a.dir, exist_ok=True)
    body, wal = os.urandom(a.body_kib << 10), os.urandom(a.wal_kib << 10)
    span = a.syncs * len(body) + (1 << 20)

    def new_file(prefilled: str | None = None) -> int:
        fd = os.open(os.path.join(a.dir, f"f-{time.time_ns()}"), os.O_CREAT | os.O_RDWR, 0o644)
        if prefilled == "written":
            zeros = b"\0" * (1 << 20)
            for off in range(0, span, len(zeros)):
                os.pwrite(fd, zeros, off)
        elif prefilled == "fallocated":
            os.posix_fallocate(fd, 0, span)
        os.fsync(fd)
        return fd

    def wal_file() -> int:
        fd = os.open(os.path.join(a.dir, "wal"), os.O_CREAT | os.O_RDWR, 0o644)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"\0" * WAL_FILE, 0)
        os.fsync(fd)
        return fd

    def write_wal(fd: int, i: int, sync: bool = True) -> None:
        os.pwrite(fd, wal, (i * len(wal)) % (WAL_FILE - len(wal)))
        if sync:
            os.fsync(fd)

    def write_body(fd: int, i: int, sync: bool = True) -> None:
        os.pwrite(fd, body, i * len(body))
        if sync:
            os.fdatasync(fd)

    def both_at_once(seg: int, w: int, i: int) -> None:
        t = threading.Thread(target=write_body, args=(seg, i))
        t.start()
        write_wal(w, i)
        t.join()

    def one_syncfs(seg: int, w: int, i: int) -> None:
        write_body(seg, i, sync=False)
        write_wal(w, i, sync=False)
        if LIBC.syncfs(seg) != 0:
            raise OSError(ctypes.get_errno(), "syncfs")

    modes = {
        "append": (None, lambda s, w, i: write_body(s, i)),
        "overwrite": ("written", lambda s, w, i: write_body(s, i)),
        "fallocated": ("fallocated", lambda s, w, i: write_body(s, i)),
        "wal": (None, lambda s, w, i: write_wal(w, i)),
        "both": (None, lambda s, w, i: (write_body(s, i), write_wal(w, i))),
        "both-at-once": (None, both_at_once),
        "syncfs": (None, one_syncfs),
    }
    print(f"batch: {a.body_kib} KiB of bodies, {a.wal_kib} KiB of WAL; {a.syncs} batches per mode")
    try:
        for r in range(1, a.rounds + 1):
            for name, (prefilled, step) in modes.items():
                seg, w = new_file(prefilled), wal_file()
                times = []
                for i in range(a.syncs):
                    t0 = time.perf_counter()
                    step(seg, w, i)
                    times.append(time.perf_counter() - t0)
                os.close(seg)
                os.close(w)
                times.sort()
                print(f"round {r}  {name:13s} p50 {times[len(times) // 2] * 1e3:.3f} ms  "
                      f"p90 {times[int(len(times) * 0.9)] * 1e3:.3f} ms  "
                      f"mean {statistics.mean(times) * 1e3:.3f} ms", flush=True)
    finally:
        shutil.rmtree(a.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
