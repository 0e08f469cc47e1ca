-- POST bodies cut from a JSON Lines file: `wrk ... -s post.lua URL -- FILE PER_REQUEST CONTENT_TYPE [count]`.
-- PER_REQUEST lines go into one body (1 with application/json: a single entry; 100 with
-- application/x-ndjson: a bulk post). The requests are formatted once, in init, and cycled.
-- With a 4th argument "count", responses are counted by status and whether 503s carry Retry-After.
local reqs = {}
local idx = 0
local threads = {}
counts = {ok = 0, s503 = 0, retry_after = 0, other = 0}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local path, per, ctype = args[1], tonumber(args[2]), args[3]
  local lines = {}
  for line in io.lines(path) do
    if #line > 0 then lines[#lines + 1] = line end
  end
  local i = 1
  while i + per - 1 <= #lines and #reqs < 2000 do
    local body = table.concat(lines, "\n", i, i + per - 1)
    if per > 1 then body = body .. "\n" end
    reqs[#reqs + 1] = wrk.format("POST", "/api/logs", {["Content-Type"] = ctype}, body)
    i = i + per
  end
  idx = math.random(#reqs)
  if args[4] == "count" then
    response = function(status, headers, body)
      if status == 202 then
        counts.ok = counts.ok + 1
      elseif status == 503 then
        counts.s503 = counts.s503 + 1
        if headers["Retry-After"] or headers["retry-after"] then counts.retry_after = counts.retry_after + 1 end
      else
        counts.other = counts.other + 1
      end
    end
  end
end

function request()
  idx = idx % #reqs + 1
  return reqs[idx]
end

function done(summary, latency, requests)
  local ok, s503, ra, other = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    ok = ok + c.ok; s503 = s503 + c.s503; ra = ra + c.retry_after; other = other + c.other
  end
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,"err_write":%d,' ..
    '"err_status":%d,"err_timeout":%d,"lat_mean_us":%.1f,"lat_max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"count_ok":%d,"count_503":%d,"count_retry_after":%d,"count_other":%d}\n',
    summary.requests, summary.duration, summary.bytes, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    ok, s503, ra, other))
end
