-- wrk script: print wrk's totals as one machine-readable line for bench/run.py.
-- Non-2xx/3xx responses are counted by wrk as errors.status.
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "GWCBENCH requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d\n",
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(99)))
end
