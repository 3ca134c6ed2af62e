-- wrk script: the bundled models (gateway.yaml) in turn, for the memory measurements: iris by
-- OIP v2 (batch 1 and batch 8) and KServe v1 (4 instances), and mlp by OIP v2 (batch 1).
local function v2(rows, width)
  local data = {}
  for i = 1, rows * width do data[i] = string.format("%.2f", 1 + (i % 5) / 2) end
  return '{"inputs":[{"name":"input","datatype":"FP32","shape":[' .. rows .. ',' .. width
    .. '],"data":[' .. table.concat(data, ",") .. ']}]}'
end
local headers = {["Content-Type"] = "application/json"}
local requests = {
  wrk.format("POST", "/v2/models/iris/infer", headers, v2(1, 4)),
  wrk.format("POST", "/v2/models/iris/infer", headers, v2(8, 4)),
  wrk.format("POST", "/v1/models/iris:predict", headers,
    '{"instances":[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3],[5.9,3.0,4.2,1.5],[4.9,3.1,1.5,0.1]]}'),
  wrk.format("POST", "/v2/models/mlp/infer", headers, v2(1, 64)),
}
local next_one = 0

function request()
  next_one = next_one % #requests + 1
  return requests[next_one]
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors=%d duration_us=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99)))
end
