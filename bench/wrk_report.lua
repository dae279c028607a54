-- wrk script: print wrk's totals as one machine-readable line for bench/run.py.
-- Non-2xx/3xx responses are counted by wrk as errors.status.
--
-- Optional request shaping, from the environment (set by bench/run.py):
--   GWC_BENCH_HEADERS  a file of "Name: value" lines; request n sends line n
--                      (cycling), e.g. a pool of distinct bearer tokens
--   GWC_BENCH_FIXED_HEADERS  a file of "Name: value" lines, all sent on every
--                      request (e.g. a CORS preflight's Origin and
--                      Access-Control-Request-* headers)
--   GWC_BENCH_METHOD, GWC_BENCH_BODY_FILE, GWC_BENCH_CONTENT_TYPE
local header_lines = {}
local next_line = 0

local function read_file(path)
    local f = assert(io.open(path, "rb"))
    local data = f:read("*a")
    f:close()
    return data
end

init = function(args)
    local headers_file = os.getenv("GWC_BENCH_HEADERS")
    if headers_file and headers_file ~= "" then
        for line in read_file(headers_file):gmatch("[^\n]+") do
            local name, value = line:match("^([^:]+): (.*)$")
            header_lines[#header_lines + 1] = { name, value }
        end
    end
    local fixed_file = os.getenv("GWC_BENCH_FIXED_HEADERS")
    if fixed_file and fixed_file ~= "" then
        for line in read_file(fixed_file):gmatch("[^\n]+") do
            local name, value = line:match("^([^:]+): (.*)$")
            wrk.headers[name] = value
        end
    end
    local method = os.getenv("GWC_BENCH_METHOD")
    if method and method ~= "" then
        wrk.method = method
    end
    local body_file = os.getenv("GWC_BENCH_BODY_FILE")
    if body_file and body_file ~= "" then
        wrk.body = read_file(body_file)
        wrk.headers["Content-Type"] = os.getenv("GWC_BENCH_CONTENT_TYPE") or "application/json"
    end
end

request = function()
    if #header_lines == 0 then
        return wrk.format()
    end
    next_line = next_line % #header_lines + 1
    local h = header_lines[next_line]
    local headers = {}
    for k, v in pairs(wrk.headers) do
        headers[k] = v
    end
    headers[h[1]] = h[2]
    return wrk.format(nil, nil, headers)
end

done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "GWCBENCH requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d\n",
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(99)))
end
