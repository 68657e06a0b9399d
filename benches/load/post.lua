-- wrk script for scripts/load-bench.sh: POSTs captured Prometheus 2.42 remote-write bodies
-- round-robin with the headers Prometheus sends, optionally paced to a fixed request rate.
--
--   LOADBENCH_BODIES=LIST_FILE LOADBENCH_TOKEN=TOKEN LOADBENCH_RATE=R LOADBENCH_THREADS=T \
--     LOADBENCH_SEND_SECONDS=S wrk -t T -c C -d S+GRACE -s post.lua URL
--
-- LOADBENCH_BODIES:  a text file with one body path per line (read once per wrk thread).
-- LOADBENCH_TOKEN:   bearer token for promgate; empty or unset for none (vmagent).
-- LOADBENCH_CONTENT_TYPE, LOADBENCH_VERSION: the Content-Type and remote-write version
--                    headers (default remote write 1.0's).
-- LOADBENCH_RATE:    total requests per second over all threads; 0 or unset = unpaced.
-- LOADBENCH_THREADS: the -t given to wrk (the script cannot see it), to split the rate.
-- LOADBENCH_SEND_SECONDS: start no request after this many seconds (0 or unset = until wrk
--                    stops). wrk simply drops the requests in flight when its -d is over; with
--                    a -d a few seconds longer than this, every request sent gets its answer
--                    and the relay never sees a connection vanish mid-request.
--
-- Pacing: wrk calls delay() before every request of every connection (because the script
-- defines it). Each thread owns rate/T of the total and keeps an absolute schedule of send
-- slots, one every T/rate seconds; delay() hands the next slot to whichever connection
-- asks and returns how long it has to wait for it (0 when the schedule is behind). So the
-- thread's requests are spaced evenly whatever the latency, as long as C/T connections are
-- enough to cover the latency (an open-loop schedule with at most C requests in flight);
-- when the relay is slower, the achieved rate drops below the target and the script reports
-- the rate achieved. Times come from clock_gettime(CLOCK_MONOTONIC) through LuaJIT's FFI.
--
-- done() prints one line "WRK key=value ..." that load-bench.sh parses.

local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_nsec; } lb_timespec;
  int clock_gettime(int clk_id, lb_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("lb_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_index", thread_count)
  table.insert(threads, thread)
end

local requests = {}
local next_req = 1
local interval_ms = 0
local next_slot = nil

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

local RATE = tonumber(os.getenv("LOADBENCH_RATE") or "0") or 0
local SEND_MS = (tonumber(os.getenv("LOADBENCH_SEND_SECONDS") or "0") or 0) * 1000
local started_ms = nil

function init(args)
  local list_file = assert(os.getenv("LOADBENCH_BODIES"), "LOADBENCH_BODIES is not set")
  local token = os.getenv("LOADBENCH_TOKEN")
  local headers = {
    ["Content-Encoding"] = "snappy",
    ["Content-Type"] = os.getenv("LOADBENCH_CONTENT_TYPE") or "application/x-protobuf",
    ["X-Prometheus-Remote-Write-Version"] = os.getenv("LOADBENCH_VERSION") or "0.1.0",
    ["User-Agent"] = "Prometheus/2.42.0",
  }
  if token and token ~= "" then
    headers["Authorization"] = "Bearer " .. token
  end
  for path in io.lines(list_file) do
    if path ~= "" then
      -- wrk.format adds Host and Content-Length.
      table.insert(requests, wrk.format("POST", wrk.path, headers, read_file(path)))
    end
  end
  assert(#requests > 0, "no bodies listed in " .. list_file)
  -- Start each thread at a different body so the threads do not send in lockstep.
  local index = thread_index or 1
  next_req = ((index - 1) * 7) % #requests + 1

  if RATE > 0 then
    local per_thread = RATE / tonumber(os.getenv("LOADBENCH_THREADS") or "1")
    interval_ms = 1000 / per_thread
  end
end

function request()
  local r = requests[next_req]
  next_req = next_req % #requests + 1
  return r
end

function delay()
  local now = now_ms()
  started_ms = started_ms or now
  if SEND_MS > 0 and now - started_ms >= SEND_MS then
    return 3600 * 1000 -- sending is over: this connection stays idle until wrk stops
  end
  if RATE <= 0 then
    return 0
  end
  if next_slot == nil or next_slot < now - 1000 then
    -- First request, or more than a second behind: restart the schedule from now
    -- instead of bursting to catch up.
    next_slot = now
  end
  local slot = next_slot
  next_slot = next_slot + interval_ms
  local wait = slot - now
  if wait <= 0 then
    return 0
  end
  return math.floor(wait + 0.5)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK requests=%d duration_us=%d bytes=%d status_errors=%d connect_errors=%d "
      .. "read_errors=%d write_errors=%d timeouts=%d p50_us=%d p90_us=%d p99_us=%d "
      .. "mean_us=%.0f max_us=%d\n",
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read,
    e.write, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
