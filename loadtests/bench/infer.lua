-- wrk script: POST one OIP v2 inference request (batch 1) of BENCH_FEATURES FP32 values
-- (default 64, the `mlp` model's input) to BENCH_PATH (default the `mlp` model's route).
local features = tonumber(os.getenv("BENCH_FEATURES") or "") or 64
local values = {}
for i = 1, features do values[i] = string.format("%.3f", (i % 7) / 7) end
wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/v2/models/mlp/infer"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"inputs":[{"name":"input","datatype":"FP32","shape":[1,' .. features .. '],"data":['
  .. table.concat(values, ",") .. ']}]}'

-- BENCH_DELAY_MS: each connection waits this long after an answer (a partial load).
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if pause then
  function delay() return pause end
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors=%d duration_us=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99)))
end
