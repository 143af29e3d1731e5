#!/usr/bin/env bash
# hookline's benchmarks (issue 7): installs what is missing, builds hookline, and runs
# bench/run.py, which measures every contender side by side and rewrites BENCHMARKS.md.
#
#   bench/run.sh                     the whole comparison (~10 min) -> BENCHMARKS.md
#   bench/run.sh --smoke             a second or two per contender -> target/bench/smoke.md
#                                    (what CI runs: exits non-zero if anything failed)
#   bench/run.sh --help              every option of bench/run.py
#
# Installs, each only when missing: Debian's wrk and webhook (apt-get), a venv with
# bench/requirements.txt in target/bench/venv (the seeds' Flask receiver), the Google
# emulators (scripts/emulators.sh install).
# hookline: HOOKLINE_BIN names the binary to measure; unset, a full run builds
# target/release/hookline (cargo build --release --locked), and --smoke uses an existing
# release or debug build, building a debug one only when there is none.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/target/bench/venv"
REQS="$REPO/bench/requirements.txt"
PYTHON="${HOOKLINE_PYTHON:-python3}"

log() { echo "bench: $*" >&2; }
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

smoke=0
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    -h|--help) exec "$PYTHON" "$REPO/bench/run.py" --help ;;
  esac
done

# -- Debian packages
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v webhook >/dev/null || missing+=(webhook)
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

# -- the venv for bench/flask_seed (stamped with the requirements' hash)
stamp=$(sha256sum "$REQS" | cut -c1-64)
if [[ ! -x $VENV/bin/gunicorn || ! -f $VENV/.stamp || $(<"$VENV/.stamp") != "$stamp" ]]; then
  log "creating $VENV from bench/requirements.txt"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS" >&2
  echo "$stamp" >"$VENV/.stamp"
fi

# -- the emulators (installs once; bench/run.py starts them if they are not running)
"$REPO/scripts/emulators.sh" install

# -- hookline
if [[ -z ${HOOKLINE_BIN:-} ]]; then
  if ((smoke)); then
    if [[ -x $REPO/target/release/hookline ]]; then
      HOOKLINE_BIN=$REPO/target/release/hookline
    elif [[ -x $REPO/target/debug/hookline ]]; then
      HOOKLINE_BIN=$REPO/target/debug/hookline
    else
      log "cargo build --locked"
      (cd "$REPO" && cargo build --locked --bin hookline >&2)
      HOOKLINE_BIN=$REPO/target/debug/hookline
    fi
  else
    log "cargo build --release --locked"
    (cd "$REPO" && cargo build --release --locked --bin hookline >&2)
    HOOKLINE_BIN=$REPO/target/release/hookline
  fi
fi
export HOOKLINE_BIN

BENCH_COMMAND_LINE="bench/run.sh${*:+ $*}"
export BENCH_COMMAND_LINE
cd "$REPO"
exec "$PYTHON" "$REPO/bench/run.py" "$@"
