-- wrk script for the hookline benchmark harness (bench/run.py): POSTs one signed GitHub
-- `issues` event, as GitHub would send it, and prints a JSON summary in done().
--
-- Environment (set by bench/run.py):
--   BENCH_BODY        path of the payload file (sent byte for byte)
--   BENCH_SIGNATURE   hex HMAC-SHA256 of the body with the source's secret
--   BENCH_PATH        request path (default /hooks/github)
--   BENCH_UNIQUE_IDS  "1": a new X-GitHub-Delivery per request (the worker's idempotency
--                     ledger skips repeats); otherwise one constant id, so the request is
--                     formatted once per thread. The signature covers the body only, so the
--                     header may vary freely.
--   BENCH_RUN_ID      prefix of delivery ids (unique per wrk invocation)
--   BENCH_RATE        optional: total requests/s to offer (paced mode, see delay() below)
--   BENCH_THREADS     wrk's -t, for paced mode
--
-- The JSON line starts with "BENCH_JSON " and carries the request count, wrk's error
-- counters (errors.status = responses with a status >= 400, i.e. every non-2xx any of the
-- contenders sends) and latency percentiles in microseconds.

local body_path = assert(os.getenv("BENCH_BODY"), "BENCH_BODY is not set")
local signature = assert(os.getenv("BENCH_SIGNATURE"), "BENCH_SIGNATURE is not set")
local path = os.getenv("BENCH_PATH") or "/hooks/github"
local unique = os.getenv("BENCH_UNIQUE_IDS") == "1"
local run_id = os.getenv("BENCH_RUN_ID") or "bench"
local rate = tonumber(os.getenv("BENCH_RATE") or "")
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")

local f = assert(io.open(body_path, "rb"))
local body = f:read("*a")
f:close()

local threads = {}
local counter = 0
local fixed_request = nil

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_index", #threads)
end

function init(args)
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["User-Agent"] = "GitHub-Hookshot/bench"
  wrk.headers["X-GitHub-Event"] = "issues"
  wrk.headers["X-GitHub-Hook-ID"] = "123456789"
  wrk.headers["X-Hub-Signature-256"] = "sha256=" .. signature
  if not unique then
    wrk.headers["X-GitHub-Delivery"] = run_id .. "-constant"
    fixed_request = wrk.format(nil, path)
  end
end

function request()
  if fixed_request then
    return fixed_request
  end
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] =
    string.format("%s-%d-%d", run_id, thread_index or 0, counter)
  return wrk.format(nil, path)
end

-- Paced mode (BENCH_RATE): each thread keeps an absolute schedule, request k due at
-- start + k * threads / rate (threads offset evenly), and a connection that comes free
-- waits for the next due slot, so arrivals follow the schedule whatever the latency, as
-- long as a connection is free (wrk2's open loop, at wrk's 1 ms timer resolution). wrk
-- measures latency from the moment the request is written; a request that leaves after
-- its due time (every connection was busy) is counted in `late` and its lateness in
-- `max_behind_ms`, so queueing that wrk's latency would not show is visible.
if rate and rate > 0 then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clk_id, bench_timespec *tp);
  ]]
  local ts = ffi.new("bench_timespec")
  local function now_ms()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local next_due = nil
  late = 0
  max_behind_ms = 0

  function delay()
    local now = now_ms()
    local interval = 1000 * nthreads / rate
    if next_due == nil then
      next_due = now + interval * ((thread_index or 1) - 1) / nthreads
    end
    local wait = next_due - now
    next_due = next_due + interval
    if wait < -1 then
      late = late + 1
      if -wait > max_behind_ms then max_behind_ms = -wait end
    end
    if wait <= 0 then return 0 end
    return math.floor(wait)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local p = function(q) return latency:percentile(q) end
  local late_total, behind = 0, 0
  for _, t in ipairs(threads) do
    late_total = late_total + (t:get("late") or 0)
    behind = math.max(behind, t:get("max_behind_ms") or 0)
  end
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,"late":%d,"max_behind_ms":%.1f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.duration, summary.requests, summary.bytes, late_total, behind,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, p(50), p(90), p(99), p(99.9)))
end
