-- wrk script: POST one JSON-RPC `echo` request per call, on keep-alive connections.
--
-- The same body goes to the IceProd server and to the bare Tornado baseline, so both parse
-- requests of the same size. A passkey, when given in the BENCH_PASSKEY environment
-- variable (never on the command line, where other users could read it), is sent as
-- `Authorization: Bearer`. At the end one line starting with BENCH_JSON carries the
-- figures for python -m bench to read.

wrk.method = "POST"
wrk.body = '{"jsonrpc": "2.0", "method": "echo", "params": ["hello"], "id": 1}'
wrk.headers["Content-Type"] = "application/json"

local passkey = os.getenv("BENCH_PASSKEY")
if passkey ~= nil and passkey ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. passkey
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
