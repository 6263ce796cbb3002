#!/usr/bin/env python3
"""End-to-end test of the replicated data path (issue 6's "Must show"): three real
`sextant serve` processes on 127.0.0.1 with RF=2, a real Prometheus 2.42 scraping a real
node_exporter every second and remote-writing to node 1, and `kill -9` of one node.

What it checks:
  1. the cluster forms and seeds a shard map in which every shard has a primary and a
     secondary on different nodes; Prometheus remote-writes for E2E_SECONDS;
  2. kill -9 of the victim (E2E_VICTIM, default: the raft leader unless that is node 1, the
     write target, else node 3). Before the kill, Prometheus's highest sent timestamp must be
     within the replication lag bound of the kill, so every sample older than the bound was
     acknowledged before the kill;
  3. while the victim is down: every shard it was primary of is promoted (epoch + 1) within
     PROMOTION_SECONDS_MAX; `query_range` and raw range queries on each surviving node answer
     exactly what Prometheus's own TSDB holds for every sample more than LAG_MS_MAX before
     the kill; and an answer covering the last LAG_MS_MAX before the kill carries a warning
     (it may lack samples acknowledged by the dead primary);
  4. the victim restarts; scraping is stopped by reloading Prometheus without scrape targets;
     Prometheus's queue drains (everything it buffered is acknowledged); merge-back completes
     (no shard left merge pending) and `sextant admin shards --verify` reports equal digests on
     both replicas of every shard over everything they hold;
  5. then every sample from before the kill is answered by every node, equal to Prometheus's,
     with no warning.
Prints what it measured (promotion time, merge-back time, samples compared). Exits non-zero
with a reason on the first failure. Usage: e2e-replication.py SEXTANT_BINARY WORK_DIR
Needs `prometheus` and `prometheus-node-exporter` (Debian packages) and python3.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HTTP_PORTS = {1: 19781, 2: 19782, 3: 19783}
GRPC_PORTS = {1: 19791, 2: 19792, 3: 19793}
EXPORTER_PORT = 19102
PROMETHEUS_PORT = 19092
SHARD_COUNT = 6
# The servers' replication lag bound (`--replication-lag-max`, the default).
LAG_MS_MAX = 5000
SCRAPE_INTERVAL_MS = 1000
FORM_SECONDS_MAX = 60.0
PROMOTION_SECONDS_MAX = 30.0
DRAIN_SECONDS_MAX = 120.0
MERGE_SECONDS_MAX = 120.0
HTTP_TIMEOUT_S = 30
# Samples this close to the first scrape are not compared (Prometheus's first batches).
START_MARGIN_MS = 5000

# Reuse the exact comparison of ci/e2e-compare.py (same series, timestamps, value strings).
_spec = importlib.util.spec_from_file_location("e2e_compare", os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e-compare.py"))
compare_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_mod)


def fail(message):
    print(f"e2e-replication: FAILED: {message}", file=sys.stderr)
    raise SystemExit(1)


def seconds(ms):
    return compare_mod.seconds(ms)


def api(base, path, params):
    """GET a Prometheus-API endpoint; returns the whole answer (data and warnings)."""
    url = base + path + "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        fail(f"{url} answered {error.code}: {error.read()[:300]!r}")
    except OSError as error:
        fail(f"{url}: {error}")
    answer = json.loads(body)
    if answer.get("status") != "success":
        fail(f"{url} did not succeed: {body[:300]!r}")
    return answer


def metric_sum(base, name):
    """Sums a metric's samples over all label sets in a /metrics exposition."""
    with urllib.request.urlopen(base + "/metrics", timeout=HTTP_TIMEOUT_S) as response:
        text = response.read().decode()
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) >= 2 and (parts[0] == name or parts[0].startswith(name + "{")):
            total += float(parts[1])
            seen = True
    return total if seen else None


class Cluster:
    def __init__(self, binary, work):
        self.binary = binary
        self.work = work
        self.procs = {}
        self.initial = ",".join(f"{i}=127.0.0.1:{GRPC_PORTS[i]}" for i in sorted(GRPC_PORTS))

    def start(self, node):
        data = os.path.join(self.work, f"node{node}")
        log = open(os.path.join(self.work, f"node{node}.log"), "ab")
        args = [
            self.binary, "serve",
            "--node-id", str(node),
            "--data-dir", data,
            "--http-listen", f"127.0.0.1:{HTTP_PORTS[node]}",
            "--grpc-listen", f"127.0.0.1:{GRPC_PORTS[node]}",
            "--initial-cluster", self.initial,
            "--shard-count", str(SHARD_COUNT),
            "--ingest-rate-max", "0",
        ]
        self.procs[node] = subprocess.Popen(args, stdout=log, stderr=log)

    def kill9(self, node):
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self):
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    def check_alive(self):
        for node, proc in self.procs.items():
            if proc.poll() is not None:
                fail(f"node {node} exited with status {proc.returncode}")

    def http(self, node):
        return f"http://127.0.0.1:{HTTP_PORTS[node]}"

    def admin(self, node, *args, check=True):
        """Runs `sextant admin` against `node`; returns (exit code, parsed JSON or stderr)."""
        cmd = [self.binary, "admin", "--addr", f"127.0.0.1:{GRPC_PORTS[node]}", "--output", "json", "--timeout", "10s", *args]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            if check:
                fail(f"`{' '.join(cmd[1:])}` did not finish in 60 s")
            return -1, "timeout"
        parsed = None
        try:
            parsed = json.loads(done.stdout) if done.stdout.strip() else None
        except json.JSONDecodeError:
            parsed = None
        if done.returncode != 0 and check:
            fail(f"`{' '.join(cmd[1:])}` exited {done.returncode}: {done.stderr.decode().strip()} {done.stdout[:300]!r}")
        if done.returncode != 0:
            return done.returncode, parsed if parsed is not None else done.stderr.decode().strip()
        if parsed is None:
            fail(f"`{' '.join(cmd[1:])}` printed no JSON: {done.stdout[:300]!r}")
        return 0, parsed


def wait_for(what, seconds_max, probe, cluster=None):
    """Polls probe() until it returns a truthy value; fails after `seconds_max`."""
    deadline = time.monotonic() + seconds_max
    while time.monotonic() < deadline:
        if cluster is not None:
            cluster.check_alive()
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    fail(f"{what} did not happen within {seconds_max:.0f} s")


def shard_map(cluster, node):
    code, reply = cluster.admin(node, "shards", check=False)
    if code != 0 or not isinstance(reply, dict) or not reply.get("exists"):
        return None
    return reply


def replicated_map(cluster, node):
    """The shard map once every shard has a primary and a different secondary."""
    reply = shard_map(cluster, node)
    if reply is None or len(reply["shards"]) != SHARD_COUNT:
        return None
    for s in reply["shards"]:
        if s.get("primary") is None or s.get("secondary") is None or s["primary"] == s["secondary"]:
            return None
    return reply


def leader_of(cluster, node):
    code, status = cluster.admin(node, "cluster", "status", check=False)
    if code != 0 or not isinstance(status, dict):
        return None
    return status.get("leader_id")


class Prometheus:
    def __init__(self, work):
        self.work = work
        self.config = os.path.join(work, "prometheus.yml")
        self.base = f"http://127.0.0.1:{PROMETHEUS_PORT}"
        self.procs = []

    def write_config(self, scrape):
        scrape_configs = (
            f"""scrape_configs:
  - job_name: node
    static_configs:
      - targets: ["127.0.0.1:{EXPORTER_PORT}"]
"""
            if scrape
            else "scrape_configs: []\n"
        )
        with open(self.config, "w") as f:
            f.write(
                f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
{scrape_configs}remote_write:
  - url: http://127.0.0.1:{HTTP_PORTS[1]}/api/v1/write
    queue_config:
      batch_send_deadline: 1s
      retry_on_http_429: true
      min_backoff: 100ms
      max_backoff: 1s
"""
            )

    def start(self):
        exporter_log = open(os.path.join(self.work, "node_exporter.log"), "ab")
        self.procs.append(subprocess.Popen(["/usr/bin/prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{EXPORTER_PORT}"], stdout=exporter_log, stderr=exporter_log))
        self.write_config(scrape=True)
        log = open(os.path.join(self.work, "prometheus.log"), "ab")
        self.prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={self.config}", f"--storage.tsdb.path={os.path.join(self.work, 'prometheus')}", f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"],
            stdout=log, stderr=log,
        )
        self.procs.append(self.prometheus)

    def stop_scraping(self):
        """Reloads Prometheus without scrape targets: no new samples; the queue keeps sending."""
        self.write_config(scrape=False)
        self.prometheus.send_signal(signal.SIGHUP)

    def metric(self, name):
        return metric_sum(self.base, name)

    def stop(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def matrix_and_warnings(base, path, params, what):
    answer = api(base, path, params)
    return compare_mod.matrix(answer["data"], what), answer.get("warnings") or []


def compare_window(prom, cluster, nodes, lo, hi, require_no_warnings):
    """Raw samples and query_range of {job="node"} over (lo, hi] from each node vs Prometheus.

    `lo` and `hi` sit half a scrape interval away from the scrapes, so every query_range step
    picks exactly the sample just before it (the same on both sides), and no raw sample lies
    on the range's start (where Prometheus 2 and 3 differ). Returns samples compared.
    """
    steps = (hi - lo) // SCRAPE_INTERVAL_MS
    if steps < 3:
        fail(f"only {steps} s to compare; raise E2E_SECONDS")
    hi = lo + steps * SCRAPE_INTERVAL_MS
    width = f"{steps * SCRAPE_INTERVAL_MS // 1000}s"
    queries = [
        ("/api/v1/query", {"query": f'{{job="node"}}[{width}]', "time": seconds(hi)}, "raw {job=\"node\"}"),
        ("/api/v1/query_range", {"query": '{job="node"}', "start": seconds(lo + SCRAPE_INTERVAL_MS), "end": seconds(hi), "step": "1"}, "query_range {job=\"node\"}"),
    ]
    compared = 0
    for path, params, what in queries:
        expected, _ = matrix_and_warnings(prom.base, path, params, what)
        if not expected:
            fail(f"{what}: Prometheus holds nothing in ({seconds(lo)}, {seconds(hi)}]")
        for node in nodes:
            got, warnings = matrix_and_warnings(cluster.http(node), path, params, what)
            differences = []
            n_series, n_samples = compare_mod.compare(f"{what} @node{node}", expected, got, True, differences)
            if differences:
                for line in differences[:10]:
                    print(f"  {line}", file=sys.stderr)
                fail(f"{what} over ({seconds(lo)}, {seconds(hi)}] at node {node}: {len(differences)} differences from Prometheus (warnings: {warnings})")
            if require_no_warnings and warnings:
                fail(f"{what} at node {node} carries warnings after merge-back: {warnings}")
            compared += n_samples
            print(f"  {what} at node {node}: {n_series} series, {n_samples} samples equal to Prometheus's" + (f" (warnings: {len(warnings)})" if warnings else ""))
    return compared


def ready(base):
    try:
        with urllib.request.urlopen(base + "/-/ready", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def drained(prom):
    pending = prom.metric("prometheus_remote_storage_samples_pending")
    return pending is not None and pending == 0


def main():
    if len(sys.argv) != 3:
        fail("usage: e2e-replication.py SEXTANT_BINARY WORK_DIR")
    binary, work = sys.argv[1], sys.argv[2]
    cluster = Cluster(binary, work)
    prom = Prometheus(work)
    try:
        run(cluster, prom)
    finally:
        prom.stop()
        cluster.stop_all()


def run(cluster, prom):
    scrape_seconds = float(os.environ.get("E2E_SECONDS", "40"))
    for node in (1, 2, 3):
        cluster.start(node)
    started = time.monotonic()
    reply = wait_for("a replicated shard map", FORM_SECONDS_MAX, lambda: replicated_map(cluster, 1), cluster)
    print(f"formed in {time.monotonic() - started:.1f} s; shards: " + ", ".join(f"{s['shard']}:{s['primary']}/{s['secondary']}@{s['epoch']}" for s in reply["shards"]))
    for node in (1, 2, 3):
        wait_for(f"node {node} ready", 30, lambda: ready(cluster.http(node)), cluster)

    prom.start()
    print(f"prometheus scraping node_exporter and remote-writing to node 1 for {scrape_seconds:.0f} s")
    time.sleep(scrape_seconds)
    cluster.check_alive()

    leader = wait_for("a raft leader", 10, lambda: leader_of(cluster, 1))
    victim = int(os.environ.get("E2E_VICTIM", "0")) or (leader if leader != 1 else 3)
    before = replicated_map(cluster, 1) or fail("the shard map lost a replica before the kill")
    victim_primaries = sorted(s["shard"] for s in before["shards"] if s["primary"] == victim)
    epochs = {s["shard"]: s["epoch"] for s in before["shards"]}
    highest_sent = prom.metric("prometheus_remote_storage_queue_highest_sent_timestamp_seconds") or 0.0
    kill_ms = int(time.time() * 1000)
    cluster.kill9(victim)
    print(f"kill -9 node {victim} (raft leader: node {leader}; primary of shards {victim_primaries}) at {seconds(kill_ms)}")
    # Everything Prometheus scraped before the cutoff was acknowledged before the kill: its queue
    # was at most LAG_MS_MAX behind (else this run cannot tell replication loss from lateness).
    cutoff_ms = kill_ms - LAG_MS_MAX
    if highest_sent * 1000 < cutoff_ms:
        fail(f"Prometheus's highest sent timestamp {highest_sent:.3f} was more than {LAG_MS_MAX} ms behind the kill; the run is inconclusive")
    survivors = [n for n in (1, 2, 3) if n != victim]

    def promoted():
        m = shard_map(cluster, survivors[0])
        if m is None:
            return None
        by_shard = {s["shard"]: s for s in m["shards"]}
        if all(by_shard[s]["primary"] not in (None, victim) and by_shard[s]["epoch"] > epochs[s] for s in victim_primaries):
            return m
        return None

    after = wait_for(f"promotion of shards {victim_primaries}", PROMOTION_SECONDS_MAX, promoted, cluster)
    promotion_s = time.time() - kill_ms / 1000
    print(f"promoted after {promotion_s:.1f} s: " + ", ".join(f"{s['shard']}:{s['primary']}/{s['secondary']}@{s['epoch']}{' merge-pending' if s.get('merge_pending') else ''}" for s in after["shards"] if s["shard"] in victim_primaries))

    # The window: from a little after the first scrape to the cutoff, half an interval off the scrapes.
    ups = compare_mod.matrix(api(prom.base, "/api/v1/query", {"query": 'up{job="node"}[10m]', "time": seconds(kill_ms)})["data"], "up")
    if len(ups) != 1:
        fail(f"expected one up series in Prometheus, got {sorted(ups)}")
    first_scrape_ms = next(iter(ups.values()))[0][0]
    lo = first_scrape_ms + START_MARGIN_MS + SCRAPE_INTERVAL_MS // 2
    hi_down = lo + ((cutoff_ms - lo) // SCRAPE_INTERVAL_MS) * SCRAPE_INTERVAL_MS
    print(f"while node {victim} is down: samples in ({seconds(lo)}, {seconds(hi_down)}] (older than {LAG_MS_MAX} ms before the kill)")
    compared = compare_window(prom, cluster, survivors, lo, hi_down, require_no_warnings=False)

    # An answer that may lack samples the dead primary acknowledged says so.
    if victim_primaries:
        for node in survivors:
            recent = api(cluster.http(node), "/api/v1/query", {"query": f'{{job="node"}}[{LAG_MS_MAX // 1000 + 2}s]', "time": seconds(kill_ms)})
            warnings = recent.get("warnings") or []
            if not any("shard" in w for w in warnings):
                fail(f"node {node} answered the last {LAG_MS_MAX} ms before the kill without a warning about shards {victim_primaries}: {warnings}")
            print(f"  node {node} warns for the window before the kill: {warnings[0]}")

    # Restart; let Prometheus deliver what it buffered, stop scraping, wait for merge-back.
    cluster.start(victim)
    restarted = time.monotonic()
    # (The queue is drained only once scraping stops: while Prometheus scrapes every second and
    # sends every few seconds, samples are almost always pending.)
    prom.stop_scraping()
    time.sleep(3)
    wait_for("Prometheus's queue to drain after scraping stopped", DRAIN_SECONDS_MAX, lambda: drained(prom), cluster)
    failed = prom.metric("prometheus_remote_storage_samples_failed_total") or 0
    dropped = prom.metric("prometheus_remote_storage_samples_dropped_total") or 0
    if failed or dropped:
        fail(f"Prometheus failed {failed:.0f} and dropped {dropped:.0f} samples")

    def merged():
        m = shard_map(cluster, victim)
        if m is None or any(s.get("merge_pending") for s in m["shards"]):
            return None
        code, verify = cluster.admin(victim, "shards", "--verify", check=False)
        if code != 0:
            return None
        return verify

    verify = wait_for("merge-back and equal digests (shards --verify)", MERGE_SECONDS_MAX, merged, cluster)
    print(f"merge-back complete and digests equal {time.monotonic() - restarted:.1f} s after the restart")
    print("  " + json.dumps(verify)[:400])

    print(f"after merge-back: every sample before the kill, on every node, with no warning")
    hi_all = lo + ((kill_ms - lo) // SCRAPE_INTERVAL_MS) * SCRAPE_INTERVAL_MS
    compared += compare_window(prom, cluster, (1, 2, 3), lo, hi_all, require_no_warnings=True)
    print(f"e2e-replication: OK (victim node {victim}, promotion {promotion_s:.1f} s, {compared} samples compared)")


if __name__ == "__main__":
    main()
