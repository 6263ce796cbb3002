#!/usr/bin/env python3
"""Side-by-side benchmark of Sextant, VictoriaMetrics and Prometheus (issue 8); run through
ci/bench-peers, which installs the peers and builds Sextant first.

Every target gets the same workload from `sextant bench-write` (same seed, same start time),
one target at a time, each on a fresh data directory under a temp dir, all on 127.0.0.1.
Per repeat and target there are two runs:

  disk run   : `--disk-hosts` hosts x `--disk-duration` of node_exporter-shaped data, sent as
               fast as the target accepts (in time order) -> ingest samples/s, request latency,
               server CPU-seconds per sample, then the dashboard query set through
               /api/v1/query_range -> p50/p99, then freshness probes, then SIGTERM and the data
               directory size after the clean shutdown -> bytes/sample.
  memory run : a fresh instance, `--mem-hosts` hosts x `--mem-duration` (many series, few
               samples each) -> (RSS after ingest settles - RSS when idle) / series.

Definitions (one for all three):
  ingest samples/s  : samples answered 2xx / wall time of the load (bench-write's figure).
  CPU s/sample      : (utime + stime of the server, /proc/<pid>/stat) from just before the load
                      to `--settle-s` after it, / samples accepted.
  RSS/series        : VmRSS from /proc/<pid>/status `--settle-s` after the memory run's load,
                      minus VmRSS of the idle server before it, / series sent.
  bytes/sample      : sum of file sizes (apparent, as `du -sb`) of the data directory after a
                      clean shutdown / samples accepted; also without the WAL and cache files
                      (EXCLUDED below says which).
  query p50/p99     : wall time of each /api/v1/query_range request from this script (urllib,
                      one keep-alive-less GET each), over `--query-iterations` runs of every
                      query; per range (1 h at a 15 s step, the whole span at a 60 s step), both
                      ending at the newest sample.
  freshness         : bench-write's probes: time from a write's 2xx answer until an instant
                      query at the sample's timestamp returns it (polled every 2 ms).

Prints the table and writes JSON; with --doc writes the section of docs/benchmarks.md between
the markers. Python standard library only.
"""

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

# Ports: not those of ci/e2e-prometheus (19480-19481, 19090, 19100) nor ci/e2e-cluster
# (19581-19583, 19591-19593).
SEXTANT_HTTP_PORT = 19680
SEXTANT_GRPC_PORT = 19681
PROMETHEUS_PORT = 19690
VICTORIA_PORT = 19692
# The 3-node Sextant cluster (RF=2): node i serves HTTP on CLUSTER_HTTP_PORTS[i-1].
CLUSTER_HTTP_PORTS = [19683, 19684, 19685]
CLUSTER_GRPC_PORTS = [19686, 19687, 19688]
CLUSTER_READY_S_MAX = 120

# The dashboard query set of the PromQL issue (storage/benches/query.rs QUERIES), verbatim.
QUERIES = [
    ("rate", "rate(node_cpu_seconds_total[5m])"),
    ("sum_by_rate", "sum by (instance) (rate(node_network_receive_bytes_total[5m]))"),
    ("histogram_quantile", "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))"),
    ("topk", "topk(10, rate(node_cpu_seconds_total[5m]))"),
]

# Files left out of "bytes/sample without WAL/cache", per target (directory names anywhere in
# the tree, and file names).
EXCLUDED = {
    "sextant": {"dirs": ["wal", "raft"], "files": ["LOCK"],
                "says": "`wal/` (the head's write-ahead log) and `raft/` (the metadata group's log)"},
    "sextant-cluster": {"dirs": ["wal", "raft"], "files": ["LOCK"],
                        "says": "the same as Sextant's, on each node"},
    "victoriametrics": {"dirs": ["cache"], "files": ["flock.lock"],
                        "says": "`cache/` (VictoriaMetrics has no WAL: its in-memory rows are flushed to parts at shutdown)"},
    "prometheus": {"dirs": ["wal", "chunks_head"], "files": ["lock", "queries.active"],
                   "says": "`wal/` and `chunks_head/` (the head: data not yet compacted into 2 h blocks)"},
}

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def log(*parts):
    print("bench-peers:", *parts, file=sys.stderr, flush=True)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def dir_bytes(path, exclude=None):
    total = 0
    for root, dirs, files in os.walk(path):
        if exclude:
            dirs[:] = [d for d in dirs if d not in exclude["dirs"]]
        for name in files:
            if exclude and name in exclude["files"]:
                continue
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


def http_get(url, timeout_s=60):
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.status, response.read()


class Target:
    """A server on a fresh data directory: one process, or for `sextant-cluster` three
    `sextant serve` processes forming one cluster (RF=2, 16 shards), load and queries sent to
    node 1 (which forwards to the shards' primaries and fans queries out). CPU and RSS are
    summed over the processes, bytes over their data directories: the cluster's cost of a
    sample, with every sample stored twice."""

    def __init__(self, name, binaries, workdir):
        self.name = name
        self.binaries = binaries
        self.data = os.path.join(workdir, f"{name}-data")
        self.logfile = os.path.join(workdir, f"{name}.log")
        self.procs = []

    @property
    def base(self):
        port = {"sextant": SEXTANT_HTTP_PORT, "prometheus": PROMETHEUS_PORT, "victoriametrics": VICTORIA_PORT,
                "sextant-cluster": CLUSTER_HTTP_PORTS[0]}[self.name]
        return f"http://127.0.0.1:{port}"

    def pids(self):
        return [p.pid for p in self.procs]

    def cpu_seconds(self):
        return sum(cpu_seconds(pid) for pid in self.pids())

    def rss_bytes(self):
        return sum(rss_bytes(pid) for pid in self.pids())

    def commands(self):
        if self.name == "sextant":
            return [[self.binaries["sextant"], "serve", "--data-dir", self.data,
                     "--http-listen", f"127.0.0.1:{SEXTANT_HTTP_PORT}", "--grpc-listen", f"127.0.0.1:{SEXTANT_GRPC_PORT}",
                     # No ingest rate limit: the benchmark sends as fast as the target accepts.
                     "--ingest-rate-max", "0"]]
        if self.name == "sextant-cluster":
            initial = ",".join(f"{i + 1}=127.0.0.1:{port}" for i, port in enumerate(CLUSTER_GRPC_PORTS))
            return [[self.binaries["sextant"], "serve", "--node-id", str(i + 1), "--data-dir", os.path.join(self.data, f"node{i + 1}"),
                     "--http-listen", f"127.0.0.1:{http}", "--grpc-listen", f"127.0.0.1:{grpc}",
                     "--initial-cluster", initial, "--ingest-rate-max", "0"]
                    for i, (http, grpc) in enumerate(zip(CLUSTER_HTTP_PORTS, CLUSTER_GRPC_PORTS))]
        if self.name == "prometheus":
            config = os.path.join(os.path.dirname(self.data), "prometheus.yml")
            with open(config, "w") as f:
                f.write("global:\n  scrape_interval: 15s\n")
            return [[self.binaries["prometheus"], f"--config.file={config}", f"--storage.tsdb.path={self.data}",
                     f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}", "--web.enable-remote-write-receiver",
                     "--storage.tsdb.retention.time=30d"]]
        # -search.latencyOffset=0s: by default VictoriaMetrics hides the newest 30 s from queries,
        # which would make freshness a setting, not a measurement. -search.disableCache: its
        # response cache would answer repeated identical query_range requests without
        # evaluating them (Sextant and Prometheus have no such cache).
        return [[self.binaries["victoriametrics"], f"-storageDataPath={self.data}",
                 f"-httpListenAddr=127.0.0.1:{VICTORIA_PORT}", "-retentionPeriod=1y",
                 "-search.latencyOffset=0s", "-search.disableCache"]]

    def ready_urls(self):
        if self.name == "sextant-cluster":
            return [f"http://127.0.0.1:{port}/-/ready" for port in CLUSTER_HTTP_PORTS]
        return [self.base + ("/health" if self.name == "victoriametrics" else "/-/ready")]

    def replicated(self):
        """Cluster only: every shard of node 1's shard map has a primary and a different
        secondary (so the load is replicated from its first sample)."""
        command = [self.binaries["sextant"], "admin", "--addr", f"127.0.0.1:{CLUSTER_GRPC_PORTS[0]}", "--output", "json",
                   "--timeout", "5s", "shards"]
        done = subprocess.run(command, capture_output=True, timeout=30)
        if done.returncode != 0:
            return False
        try:
            shards = json.loads(done.stdout).get("shards") or []
        except (json.JSONDecodeError, AttributeError):
            return False
        return bool(shards) and all(s.get("primary") is not None and s.get("secondary") not in (None, s["primary"]) for s in shards)

    def start(self):
        shutil.rmtree(self.data, ignore_errors=True)
        os.makedirs(self.data)
        self.log_handle = open(self.logfile, "ab")
        for command in self.commands():
            self.procs.append(subprocess.Popen(command, stdout=self.log_handle, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + (CLUSTER_READY_S_MAX if self.name == "sextant-cluster" else 60)
        pending = self.ready_urls()
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {proc.returncode} at start; see {self.logfile}")
            try:
                pending = [url for url in pending if http_get(url, timeout_s=2)[0] != 200]
            except OSError:
                pass
            if not pending and (self.name != "sextant-cluster" or self.replicated()):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready (or, a cluster, not replicated) in time; see {self.logfile}")

    def stop(self):
        """SIGTERM and wait: a clean shutdown (all processes at once). Returns seconds it took."""
        started = time.monotonic()
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=180))
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError(f"{self.name} did not stop within 180 s of SIGTERM")
        self.log_handle.close()
        # Prometheus and VictoriaMetrics exit 0 on SIGTERM, as does Sextant.
        if any(code != 0 for code in codes):
            raise RuntimeError(f"{self.name} exited {codes} on SIGTERM; see {self.logfile}")
        return time.monotonic() - started

    def kill(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def bench_write(args, url, hosts, duration, start_ms, freshness_probes, out_json):
    command = [args.sextant, "bench-write", "--url", url, "--hosts", str(hosts), "--duration", duration,
               "--start-ms", str(start_ms), "--seed", str(args.seed), "--batch-samples", str(args.batch_samples),
               "--concurrency", str(args.concurrency), "--freshness-probes", str(freshness_probes),
               "--json", out_json, "--quiet"]
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"bench-write failed ({result.returncode}) against {url}")
    with open(out_json) as f:
        return json.load(f)


def percentile(values, q):
    """Nearest-rank quantile, as bench-write computes it."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = min(len(ordered), max(1, math.ceil(q * len(ordered))))
    return ordered[rank - 1]


def wait_visible(target, last_ms, series):
    """Waits until an instant query at the newest sample sees every series of the disk run
    (VictoriaMetrics makes rows searchable about a second after it acknowledges them); returns
    the seconds waited after the settle time."""
    started = time.monotonic()
    params = urllib.parse.urlencode({"query": 'count({job="node"})', "time": f"{last_ms / 1000:.3f}"})
    seen = None
    while time.monotonic() - started < 120:
        status, body = http_get(f"{target.base}/api/v1/query?{params}")
        result = json.loads(body)["data"]["result"] if status == 200 else []
        seen = int(float(result[0]["value"][1])) if result else 0
        if seen >= series:
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"{target.name}: {seen} of {series} series visible 120 s after the load")


def run_queries(target, end_s, span_s, iterations):
    """Returns {range_name: {"p50_ms", "p99_ms", "per_query": {name: [ms...]}, "series": {name: n}}}."""
    ranges = [("1h", min(3600, span_s), 15), ("span", span_s, 60)]
    out = {}
    for range_name, length_s, step_s in ranges:
        timings = []
        per_query = {}
        series = {}
        for name, query in QUERIES:
            params = urllib.parse.urlencode({"query": query, "start": f"{end_s - length_s:.3f}", "end": f"{end_s:.3f}", "step": f"{step_s}"})
            url = f"{target.base}/api/v1/query_range?{params}"
            runs = []
            for _ in range(iterations):
                started = time.perf_counter()
                status, body = http_get(url)
                runs.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    raise RuntimeError(f"{target.name}: {query} answered {status}")
            answer = json.loads(body)
            if answer.get("status") != "success":
                raise RuntimeError(f"{target.name}: {query}: {answer}")
            series[name] = len(answer["data"]["result"])
            if series[name] == 0:
                raise RuntimeError(f"{target.name}: {query} over {range_name} returned no series")
            per_query[name] = runs
            timings.extend(runs)
        out[range_name] = {"length_s": length_s, "step_s": step_s, "p50_ms": percentile(timings, 0.5),
                           "p99_ms": percentile(timings, 0.99), "per_query": per_query, "series": series}
    return out


def disk_run(args, target, start_ms, workdir, repeat):
    target.start()
    time.sleep(args.idle_s)
    cpu_before = target.cpu_seconds()
    load_before = os.getloadavg()[0]
    report = bench_write(args, target.base + "/api/v1/write", args.disk_hosts, args.disk_duration, start_ms, 0,
                         os.path.join(workdir, f"{target.name}-disk-{repeat}.json"))
    time.sleep(args.settle_s)
    cpu = target.cpu_seconds() - cpu_before
    accepted = report["samples_accepted"]
    end_s = report["workload"]["last_sample_ms"] / 1000
    span_s = int((report["workload"]["last_sample_ms"] - report["workload"]["first_sample_ms"]) / 1000)
    visible_s = wait_visible(target, report["workload"]["last_sample_ms"], report["workload"]["series"])
    queries = run_queries(target, end_s, span_s, args.query_iterations)
    # One scrape of one host (517 samples, after the disk data), then the probes.
    fresh = bench_write(args, target.base + "/api/v1/write", 1, "15s", int(time.time() * 1000) - 60_000,
                        args.freshness_probes, os.path.join(workdir, f"{target.name}-fresh-{repeat}.json"))
    rss_after_queries = target.rss_bytes()
    stop_s = target.stop()
    load_after = os.getloadavg()[0]
    # The freshness run's 517 + probes samples (< 0.01 %) are in the files, not in the division.
    total = dir_bytes(target.data)
    without = dir_bytes(target.data, EXCLUDED[target.name])
    return {
        "samples_accepted": accepted,
        "samples_sent": report["workload"]["samples"],
        "refusals": report["refusals"],
        "ingest_samples_per_s": report["accepted_samples_per_s"],
        "request_latency_ms": report["latency_ms"],
        "cpu_s": cpu,
        "cpu_us_per_sample": cpu / accepted * 1e6 if accepted else None,
        "bytes_total": total,
        "bytes_without_wal": without,
        "bytes_per_sample": total / accepted if accepted else None,
        "bytes_per_sample_without_wal": without / accepted if accepted else None,
        "queries": queries,
        "freshness_ms": fresh["freshness_ms"],
        "rss_after_queries_bytes": rss_after_queries,
        "newest_visible_after_settle_s": visible_s,
        "shutdown_s": stop_s,
        "load_average": [load_before, load_after],
    }


def memory_run(args, target, start_ms, workdir, repeat):
    target.start()
    time.sleep(args.idle_s)
    idle = target.rss_bytes()
    report = bench_write(args, target.base + "/api/v1/write", args.mem_hosts, args.mem_duration, start_ms, 0,
                         os.path.join(workdir, f"{target.name}-mem-{repeat}.json"))
    time.sleep(args.settle_s)
    after = target.rss_bytes()
    series = report["workload"]["series"]
    target.stop()
    return {"rss_idle_bytes": idle, "rss_after_bytes": after, "series": series,
            "samples_accepted": report["samples_accepted"], "refusals": report["refusals"],
            "rss_per_series_bytes": (after - idle) / series if series else None}


def package_version(package):
    """Debian's version of a package (VictoriaMetrics 1.79's `-version` prints nothing)."""
    try:
        result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, timeout=30)
        return f"Debian package {result.stdout.strip()}" if result.returncode == 0 and result.stdout.strip() else "no Debian package"
    except (OSError, subprocess.TimeoutExpired):
        return "no dpkg-query"


def version(command):
    try:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
        return result.stdout.strip().splitlines()[0] if result.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"


def machine():
    model = "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {"nproc": os.cpu_count(), "cpu": model, "mem_gib": mem_kb / 1024 / 1024, "kernel": platform.release()}


METRICS = [
    # key, label, unit, how to get it from a repeat's results, lower is better
    ("ingest", "ingest (samples/s, higher is better)", lambda d, m: d["ingest_samples_per_s"]),
    ("cpu", "server CPU per sample (µs)", lambda d, m: d["cpu_us_per_sample"]),
    ("rss", "RSS per active series (bytes)", lambda d, m: m["rss_per_series_bytes"]),
    ("bytes", "bytes/sample on disk, all files", lambda d, m: d["bytes_per_sample"]),
    ("bytes_nowal", "bytes/sample without WAL/cache", lambda d, m: d["bytes_per_sample_without_wal"]),
    ("q1h_p50", "query_range 1 h @15 s, p50 (ms)", lambda d, m: d["queries"]["1h"]["p50_ms"]),
    ("q1h_p99", "query_range 1 h @15 s, p99 (ms)", lambda d, m: d["queries"]["1h"]["p99_ms"]),
    ("qspan_p50", "query_range whole span @60 s, p50 (ms)", lambda d, m: d["queries"]["span"]["p50_ms"]),
    ("qspan_p99", "query_range whole span @60 s, p99 (ms)", lambda d, m: d["queries"]["span"]["p99_ms"]),
    ("fresh_p50", "freshness p50 (ms)", lambda d, m: d["freshness_ms"]["p50"]),
    ("fresh_p99", "freshness p99 (ms)", lambda d, m: d["freshness_ms"]["p99"]),
    ("write_p99", "remote-write request latency p99 (ms)", lambda d, m: d["request_latency_ms"]["p99"]),
]

TARGETS_RULES = [
    # metric key, peer, factor, text
    ("bytes", "victoriametrics", 0.8, "bytes/sample ≤ 0.8 × VictoriaMetrics"),
    ("cpu", "victoriametrics", 0.8, "ingest CPU/sample ≤ 0.8 × VictoriaMetrics"),
    ("rss", "victoriametrics", 1.0, "RSS/active series ≤ VictoriaMetrics"),
    ("q1h_p99", "prometheus", 0.5, "dashboard query p99 (1 h) ≤ 0.5 × Prometheus"),
    ("qspan_p99", "prometheus", 0.5, "dashboard query p99 (whole span) ≤ 0.5 × Prometheus"),
]


def summarize(results, names):
    """{metric: {target: (median, min, max)}}"""
    table = {}
    for key, _, get in METRICS:
        table[key] = {}
        for name in names:
            values = [get(r["disk"], r["memory"]) for r in results[name]]
            values = [v for v in values if v is not None]
            if values:
                table[key][name] = (statistics.median(values), min(values), max(values))
    return table


def fmt(value):
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def render(meta, table, names, repeats):
    header = "| metric | " + " | ".join(meta["labels"][n] for n in names) + " | Sextant/VM | Sextant/Prometheus |"
    lines = [header, "|" + "---|" * (len(names) + 3)]
    for key, label, _ in METRICS:
        cells = []
        for name in names:
            if name in table[key]:
                median, low, high = table[key][name]
                cells.append(fmt(median) + (f" ({fmt(low)}–{fmt(high)})" if repeats > 1 else ""))
            else:
                cells.append("–")
        ratios = []
        for peer in ("victoriametrics", "prometheus"):
            s, p = table[key].get("sextant"), table[key].get(peer)
            ratios.append(f"{s[0] / p[0]:.3g}" if s and p and p[0] else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def verdicts(table):
    lines = []
    for key, peer, factor, text in TARGETS_RULES:
        s, p = table[key].get("sextant"), table[key].get(peer)
        if not (s and p and p[0]):
            lines.append(f"- {text}: not measured (a target is missing).")
            continue
        ratio = s[0] / p[0]
        if ratio <= factor:
            lines.append(f"- {text}: **meets it** ({ratio:.2f} ×).")
        else:
            lines.append(f"- {text}: **behind**: {ratio:.2f} ×, i.e. {ratio / factor:.2f} × the target "
                         f"({fmt(s[0])} against a target of {fmt(p[0] * factor)}).")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sextant", required=True, help="the sextant binary (serve and bench-write)")
    parser.add_argument("--prometheus", default=shutil.which("prometheus"))
    parser.add_argument("--victoria-metrics", default=shutil.which("victoria-metrics"))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--profile", default="release")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--disk-hosts", type=int)
    parser.add_argument("--disk-duration")
    parser.add_argument("--mem-hosts", type=int)
    parser.add_argument("--mem-duration")
    parser.add_argument("--query-iterations", type=int)
    parser.add_argument("--freshness-probes", type=int)
    parser.add_argument("--settle-s", type=float)
    parser.add_argument("--idle-s", type=float)
    parser.add_argument("--batch-samples", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json-out", required=True)
    parser.add_argument("--markdown-out", required=True, help="the rendered section goes here")
    parser.add_argument("--doc", help="docs/benchmarks.md: replace the section between the markers")
    parser.add_argument("--targets", default="sextant,sextant-cluster,victoriametrics,prometheus")
    args = parser.parse_args()
    full = {"repeats": 3, "disk_hosts": 5, "disk_duration": "12h", "mem_hosts": 200, "mem_duration": "5m",
            "query_iterations": 20, "freshness_probes": 20, "settle_s": 10.0, "idle_s": 3.0}
    smoke = {"repeats": 1, "disk_hosts": 2, "disk_duration": "30m", "mem_hosts": 10, "mem_duration": "2m",
             "query_iterations": 3, "freshness_probes": 3, "settle_s": 1.0, "idle_s": 1.0}
    for key, value in (smoke if args.smoke else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    names = [n for n in args.targets.split(",") if n]
    binaries = {"sextant": args.sextant, "sextant-cluster": args.sextant, "prometheus": args.prometheus,
                "victoriametrics": args.victoria_metrics}
    for name in names:
        if not binaries.get(name) or not os.access(binaries[name], os.X_OK):
            raise SystemExit(f"bench-peers: no binary for {name} ({binaries.get(name)})")

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": {
            "sextant": version([args.sextant, "--version"]) + f" (profile {args.profile}, commit "
                       + version(["git", "rev-parse", "--short", "HEAD"]) + ")",
            "victoriametrics": version([args.victoria_metrics or "false", "-version"]) + "; " + package_version("victoria-metrics"),
            "prometheus": version([args.prometheus or "false", "--version"]) + "; " + package_version("prometheus"),
        },
        "labels": {"sextant": "Sextant", "sextant-cluster": "Sextant 3 nodes, RF=2", "victoriametrics": "VictoriaMetrics",
                   "prometheus": "Prometheus"},
        "settings": {k: getattr(args, k) for k in ("smoke", "repeats", "disk_hosts", "disk_duration", "mem_hosts",
                                                   "mem_duration", "query_iterations", "freshness_probes", "settle_s",
                                                   "idle_s", "batch_samples", "concurrency", "seed")},
        "excluded": {n: EXCLUDED[n]["says"] for n in names},
        "load_average_start": os.getloadavg(),
    }
    # One start for every target and repeat: the same bytes go to each. The data ends 2 min
    # before now, inside every target's acceptance window (Sextant: 24 h back by default).
    now_ms = int(time.time() * 1000)
    span_ms = {"h": 3_600_000, "m": 60_000}
    disk_ms = int(args.disk_duration[:-1]) * span_ms[args.disk_duration[-1]]
    mem_ms = int(args.mem_duration[:-1]) * span_ms[args.mem_duration[-1]]
    disk_start_ms = now_ms - disk_ms - 120_000
    workdir = tempfile.mkdtemp(prefix="bench-peers-")
    results = {n: [] for n in names}
    load_samples = []
    started = time.monotonic()
    current = None
    try:
        for repeat in range(args.repeats):
            for name in names:
                current = Target(name, binaries, workdir)
                log(f"repeat {repeat + 1}/{args.repeats}: {name}: disk run ({args.disk_hosts} hosts x {args.disk_duration})")
                disk = disk_run(args, current, disk_start_ms, workdir, repeat)
                load_samples.extend(disk["load_average"])
                mem_start_ms = int(time.time() * 1000) - mem_ms - 60_000
                current = Target(name, binaries, workdir)
                log(f"repeat {repeat + 1}/{args.repeats}: {name}: memory run ({args.mem_hosts} hosts x {args.mem_duration})")
                memory = memory_run(args, current, mem_start_ms, workdir, repeat)
                current = None
                results[name].append({"disk": disk, "memory": memory})
                log(f"{name}: {disk['ingest_samples_per_s']:,.0f} samples/s, {disk['cpu_us_per_sample']:.2f} µs CPU/sample, "
                    f"{disk['bytes_per_sample']:.3f} bytes/sample ({disk['bytes_per_sample_without_wal']:.3f} without WAL), "
                    f"{memory['rss_per_series_bytes']:,.0f} bytes RSS/series, query p99 {disk['queries']['1h']['p99_ms']:.1f} ms (1 h) "
                    f"{disk['queries']['span']['p99_ms']:.1f} ms (span), freshness p50 {disk['freshness_ms']['p50']:.1f} ms")
    except BaseException:
        log(f"failed; logs and data kept in {workdir}")
        raise
    finally:
        if current is not None:
            current.kill()
    meta["elapsed_s"] = time.monotonic() - started
    meta["load_average_end"] = os.getloadavg()
    meta["load_average_samples"] = load_samples
    table = summarize(results, names)
    rendered = render(meta, table, names, args.repeats)
    print(rendered)
    with open(args.json_out, "w") as f:
        json.dump({"meta": meta, "results": results, "table": table}, f, indent=1)

    m = meta["machine"]
    loads = load_samples or [0]
    section = f"""<!-- bench-peers:begin (written by ci/bench-peers; edit the script, not this section) -->
## Side by side: Sextant, VictoriaMetrics, Prometheus (`ci/bench-peers`)

- Date: {meta['date']}; the run took {meta['elapsed_s'] / 60:.1f} min.
- Machine: `nproc` {m['nproc']}, CPU `{m['cpu']}`, {m['mem_gib']:.1f} GiB RAM, Linux {m['kernel']}.
- **Load**: 1-minute load average {min(loads):.1f}–{max(loads):.1f} during the run (sampled before and
  after each target's disk run; {meta['load_average_start'][0]:.1f} at the start). The 2 cores were
  shared with generator and server and, during this session, with other builds: every time and
  rate below is inflated and noisy by that; sizes are not.
- Versions: Sextant `{meta['versions']['sextant']}`; VictoriaMetrics `{meta['versions']['victoriametrics']}`;
  Prometheus `{meta['versions']['prometheus']}`.
- Workload (`sextant bench-write`, seed {args.seed}, identical bytes to each target): disk run
  {args.disk_hosts} hosts × 517 series (the bundled node_exporter 1.5 scrape plus a 10-bucket
  histogram) × {args.disk_duration} at 15 s with 0–3 ms jitter, {args.batch_samples} samples per request,
  {args.concurrency} requests in flight, as fast as the target accepts; memory run {args.mem_hosts} hosts × 517
  series × {args.mem_duration}. Settle time {args.settle_s:g} s; {args.repeats} repeat(s), targets in turn
  ({", ".join(meta["labels"][n] for n in names)}), each on a fresh data directory.""" + ("""
- Sextant 3 nodes, RF=2: three `sextant serve` processes on this machine forming one cluster
  (`--initial-cluster`, 16 shards, each with a primary and a secondary on different nodes before
  the load starts); load, queries and freshness probes go to node 1, which forwards writes to
  the shards' primaries and fans queries out. CPU and RSS are the sum over the three processes,
  bytes the sum over their data directories, so per-sample figures are the cluster's cost of a
  sample stored twice; the ratio columns compare the single node only.""" if "sextant-cluster" in names else "") + f"""
- Queries: the PromQL issue's dashboard set (`rate`, `sum by (instance) (rate)`,
  `histogram_quantile` over `sum by (le)`, `topk`), {args.query_iterations} runs each through
  `/api/v1/query_range`, p50/p99 over all runs of all four queries.
- Settings that differ from the defaults: Sextant `--ingest-rate-max 0`; VictoriaMetrics
  `-search.latencyOffset=0s -search.disableCache` (else the newest 30 s are hidden from
  queries and repeated queries come from a response cache); Prometheus
  `--web.enable-remote-write-receiver --storage.tsdb.retention.time=30d`.
- Excluded from "without WAL/cache": """ + "; ".join(f"{meta['labels'][n]}: {EXCLUDED[n]['says']}" for n in names) + f""".

Medians{' (min–max over the repeats)' if args.repeats > 1 else ''}; ratios are Sextant's median over the peer's.

{rendered}

Against the issue's targets (from this run's medians):

{verdicts(table)}
<!-- bench-peers:end -->"""
    with open(args.markdown_out, "w") as f:
        f.write(section + "\n")
    if args.doc:
        with open(args.doc) as f:
            doc = f.read()
        begin = doc.find("<!-- bench-peers:begin")
        end = doc.find("<!-- bench-peers:end -->")
        if begin >= 0 and end > begin:
            doc = doc[:begin] + section + doc[end + len("<!-- bench-peers:end -->"):]
        else:
            doc = doc.rstrip("\n") + "\n\n" + section + "\n"
        with open(args.doc, "w") as f:
            f.write(doc)
        log(f"wrote {args.doc}")
    shutil.rmtree(workdir, ignore_errors=True)
    log(f"done in {meta['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
