-- wrk script for benches/load.sh. Configured by environment variables (all optional):
--   LOAD_TOKEN        one access token, sent as "Authorization: Bearer ..." on every request
--   LOAD_TOKENS_FILE  one token per line, sent in rotation (distinct tokens defeat the cache)
--   LOAD_BODY         a form body: the request becomes a POST with that body
--   LOAD_DELAY_MS     pause per connection between requests (a paced, non-saturating load)
--   LOAD_STATUSES     "1" to count response statuses (costs the generator some speed)
--   LOAD_MAX_REQUESTS stop after this many responses (per wrk thread): a fixed amount of work,
--                     for counting system calls and context switches per request (wrk still
--                     waits out -d: LOAD_STOP_FILE is created then, for the caller to SIGINT it)
-- done() prints one line "LOADJSON {...}" that the orchestrator parses.

local token = os.getenv("LOAD_TOKEN")
local tokens_file = os.getenv("LOAD_TOKENS_FILE")
local body = os.getenv("LOAD_BODY")
local delay_ms = tonumber(os.getenv("LOAD_DELAY_MS") or "0")
local count_statuses = os.getenv("LOAD_STATUSES") == "1"
local max_requests = tonumber(os.getenv("LOAD_MAX_REQUESTS") or "0")
local stop_file = os.getenv("LOAD_STOP_FILE")

local threads = {}
statuses = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  if body then
    wrk.method = "POST"
    wrk.body = body
    wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  end
  if token then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
end

if tokens_file then
  local bearers = {}
  for line in io.lines(tokens_file) do
    if #line > 0 then
      bearers[#bearers + 1] = "Bearer " .. line
    end
  end
  local i = 0
  local n = #bearers
  function request()
    i = i % n + 1
    wrk.headers["Authorization"] = bearers[i]
    return wrk.format()
  end
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

local responses = 0
if count_statuses or max_requests > 0 then
  function response(status, headers, body)
    if count_statuses then
      statuses[status] = (statuses[status] or 0) + 1
    end
    responses = responses + 1
    if max_requests > 0 and responses >= max_requests then
      wrk.thread:stop()
      if stop_file then
        local f = io.open(stop_file, "w")
        if f then f:close() end
      end
    end
  end
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses") or {}
    for status, n in pairs(counts) do
      merged[status] = (merged[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(merged) do
    parts[#parts + 1] = string.format('"%d":%d', status, n)
  end
  local e = summary.errors
  io.write(string.format(
    'LOADJSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"max_us":%d,"mean_us":%.1f,"statuses":{%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, table.concat(parts, ",")))
end
