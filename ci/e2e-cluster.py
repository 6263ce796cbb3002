#!/usr/bin/env python3
"""End-to-end test of the metadata cluster: three real `sextant serve` processes on 127.0.0.1,
driven only through the `sextant admin` CLI (standard library only).

What it checks (issue 5's "Must show"):
  1. the three processes form one cluster: `cluster status` shows three voters and one leader;
  2. `rules apply` of a Prometheus rule file (which Debian's `promtool check rules` accepts) and
     `dashboards put` (two versions) are readable from every node, linearizably (a follower
     hands the read to the leader) and from each node's own applied copy
     (`--consistency local`), once every node's applied index has converged;
  3. kill -9 of the leader: a new leader is elected within ELECTION_SECONDS_MAX, and no
     acknowledged change is lost; a change written after the failover is acknowledged too;
  4. the killed node restarts, catches up (its applied index reaches the commit index) and its
     local copy holds every acknowledged change; applied indexes converge on all three.
Prints what it measured (election time, catch-up time). Exits non-zero with a reason on the
first failure. Usage: e2e-cluster.py SEXTANT_BINARY WORK_DIR
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

ELECTION_SECONDS_MAX = 10.0
FORM_SECONDS_MAX = 60.0
CATCH_UP_SECONDS_MAX = 60.0
HTTP_PORTS = {1: 19581, 2: 19582, 3: 19583}
GRPC_PORTS = {1: 19591, 2: 19592, 3: 19593}

RULES = """groups:
  - name: node-recording
    interval: 30s
    rules:
      - record: job:node_cpu_seconds:rate5m
        expr: sum by (job) (rate(node_cpu_seconds_total[5m]))
  - name: node-alerts
    rules:
      - alert: NodeDown
        expr: up{job="node"} == 0
        for: 1m
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.instance }} is down"
"""

DASHBOARD_V1 = {"uid": "node-overview", "title": "Node overview", "panels": [], "schemaVersion": 39}
DASHBOARD_V2 = dict(DASHBOARD_V1, panels=[{"type": "timeseries", "title": "CPU"}])
DASHBOARD_V3 = dict(DASHBOARD_V1, panels=[{"type": "timeseries", "title": "CPU"}, {"type": "stat", "title": "Up"}])


def fail(message):
    print(f"e2e-cluster: FAILED: {message}", file=sys.stderr)
    raise SystemExit(1)


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
                fail(f"node {node} exited with status {proc.returncode}; log:\n{self.tail(node)}")

    def tail(self, node, lines=30):
        path = os.path.join(self.work, f"node{node}.log")
        with open(path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")

    def admin(self, node, *args, consistency="linearizable", check=True):
        """Runs `sextant admin` against `node`; returns (exit code, parsed JSON or stderr)."""
        cmd = [self.binary, "admin", "--addr", f"127.0.0.1:{GRPC_PORTS[node]}", "--output", "json",
               "--consistency", consistency, "--timeout", "5s", *args]
        done = subprocess.run(cmd, capture_output=True, timeout=30)
        if done.returncode != 0:
            if check:
                fail(f"`{' '.join(cmd[1:])}` exited {done.returncode}: {done.stderr.decode().strip()}")
            return done.returncode, done.stderr.decode().strip()
        try:
            return 0, json.loads(done.stdout)
        except json.JSONDecodeError as e:
            fail(f"`{' '.join(cmd[1:])}` printed no JSON ({e}): {done.stdout[:300]!r}")


def wait_for(what, seconds, probe):
    """Polls probe() until it returns a truthy value; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except subprocess.TimeoutExpired as e:
            value, last = None, f"timeout: {e}"
        if value:
            return value
        time.sleep(0.25)
    fail(f"{what} did not happen within {seconds:.0f} s (last: {last})")


def status_of(cluster, node):
    code, status = cluster.admin(node, "cluster", "status", check=False)
    return status if code == 0 else None


def formed(cluster, node, voters):
    status = status_of(cluster, node)
    if not status or status.get("leader_id") is None:
        return None
    members = status.get("members", [])
    ids = sorted(m["node_id"] for m in members if m.get("role") == "voter")
    if ids != voters:
        return None
    leaders = [m["node_id"] for m in members if m.get("leader")]
    if leaders != [status["leader_id"]]:
        return None
    return status


def local_state(cluster, node):
    """What `node`'s own applied copy holds: rule group names, dashboard versions, index."""
    _, rules = cluster.admin(node, "rules", "list", consistency="local")
    _, history = cluster.admin(node, "dashboards", "history", "node-overview", consistency="local")
    names = sorted(g["name"] for g in rules["groups"])
    versions = [v["version"] for v in history["versions"]]
    return names, versions, rules["read"]["applied_index"]


def converged(cluster, nodes, at_least):
    """Every node's local applied index is the same and ≥ at_least."""
    indexes = {}
    for node in nodes:
        code, status = cluster.admin(node, "rules", "list", consistency="local", check=False)
        if code != 0:
            return None
        indexes[node] = status["read"]["applied_index"]
    values = set(indexes.values())
    if len(values) == 1 and min(values) >= at_least:
        return indexes
    return None


def main():
    if len(sys.argv) != 3:
        fail("usage: e2e-cluster.py SEXTANT_BINARY WORK_DIR")
    binary, work = sys.argv[1], sys.argv[2]
    cluster = Cluster(binary, work)
    try:
        run(cluster, work)
    finally:
        cluster.stop_all()


def run(cluster, work):
    for node in (1, 2, 3):
        cluster.start(node)
    started = time.monotonic()
    status = wait_for("three voters and one leader", FORM_SECONDS_MAX, lambda: (cluster.check_alive(), formed(cluster, 1, [1, 2, 3]))[1])
    print(f"formed: leader node {status['leader_id']}, term {status['term']}, after {time.monotonic() - started:.1f} s")
    for node in (2, 3):
        other = wait_for(f"node {node} agreeing on the leader", 10, lambda: formed(cluster, node, [1, 2, 3]))
        if other["leader_id"] != status["leader_id"]:
            # A leader change between the two reads is possible but must settle.
            status = wait_for("one leader seen by every node", 10, lambda: formed(cluster, 1, [1, 2, 3]))

    rules_path = os.path.join(work, "rules.yml")
    with open(rules_path, "w") as f:
        f.write(RULES)
    promtool = shutil.which("promtool")
    if promtool:
        done = subprocess.run([promtool, "check", "rules", rules_path], capture_output=True)
        if done.returncode != 0:
            fail(f"promtool check rules refused the test's rule file: {done.stdout.decode()} {done.stderr.decode()}")
        print("promtool check rules: the rule file is valid")
    elif os.environ.get("CI") == "true":
        fail("promtool not found (Debian package `prometheus`)")
    else:
        print("promtool not found: the rule file was not cross-checked")

    # Writes through a follower are forwarded to the leader.
    leader = status["leader_id"]
    follower = next(n for n in (1, 2, 3) if n != leader)
    acked = []
    _, reply = cluster.admin(follower, "rules", "apply", "-f", rules_path)
    acked.append(reply["write"]["index"])
    for version, dashboard in enumerate([DASHBOARD_V1, DASHBOARD_V2], start=1):
        path = os.path.join(work, f"dashboard-v{version}.json")
        with open(path, "w") as f:
            json.dump(dashboard, f)
        _, reply = cluster.admin(follower if version == 1 else leader, "dashboards", "put", "-f", path)
        acked.append(reply["write"]["index"])
    print(f"acknowledged metadata changes at log indexes {acked}")

    # Linearizable reads from every node (followers hand them to the leader).
    want_groups = ["node-alerts", "node-recording"]
    for node in (1, 2, 3):
        _, rules = cluster.admin(node, "rules", "list")
        names = sorted(g["name"] for g in rules["groups"])
        if names != want_groups:
            fail(f"linearizable rules list at node {node}: {names}, want {want_groups}")
        _, dash = cluster.admin(node, "dashboards", "get", "node-overview")
        if dash["dashboard"]["dashboard"] != DASHBOARD_V2:
            fail(f"linearizable dashboard at node {node} is not the latest version: {dash}")
    indexes = wait_for("applied indexes converging", 30, lambda: converged(cluster, (1, 2, 3), max(acked)))
    print(f"applied indexes converged: {indexes}")
    for node in (1, 2, 3):
        names, versions, index = local_state(cluster, node)
        if names != want_groups or len(versions) != 2:
            fail(f"node {node}'s local copy at index {index}: groups {names}, dashboard versions {versions}")
    print("local copies on all three nodes hold the rule groups and both dashboard versions")

    # kill -9 the leader: another is elected, nothing acknowledged is lost.
    cluster.kill9(leader)
    killed_at = time.monotonic()
    survivors = [n for n in (1, 2, 3) if n != leader]

    def new_leader():
        s = status_of(cluster, survivors[0])
        if s and s.get("leader_id") not in (None, leader):
            return s
        return None

    status = wait_for("a new leader after kill -9", ELECTION_SECONDS_MAX, new_leader)
    election = time.monotonic() - killed_at
    print(f"killed leader node {leader}; node {status['leader_id']} leads after {election:.2f} s (term {status['term']})")
    path = os.path.join(work, "dashboard-v3.json")
    with open(path, "w") as f:
        json.dump(DASHBOARD_V3, f)
    _, reply = wait_for("a write accepted after failover", 20, lambda: (lambda r: r if r[0] == 0 else None)(cluster.admin(survivors[1], "dashboards", "put", "-f", path, check=False)))
    acked.append(reply["write"]["index"])
    for node in survivors:
        _, history = cluster.admin(node, "dashboards", "history", "node-overview")
        if len(history["versions"]) != 3:
            fail(f"after failover, node {node} sees {len(history['versions'])} dashboard versions, want 3")
        _, rules = cluster.admin(node, "rules", "list")
        if sorted(g["name"] for g in rules["groups"]) != want_groups:
            fail(f"after failover, node {node} lost rule groups: {rules}")

    # The killed node restarts and catches up.
    cluster.start(leader)
    restarted_at = time.monotonic()
    indexes = wait_for("the restarted node catching up", CATCH_UP_SECONDS_MAX, lambda: (cluster.check_alive(), converged(cluster, (1, 2, 3), max(acked)))[1])
    print(f"node {leader} restarted and caught up in {time.monotonic() - restarted_at:.1f} s; applied indexes {indexes}")
    names, versions, index = local_state(cluster, leader)
    if names != want_groups or len(versions) != 3:
        fail(f"restarted node {leader}'s local copy at index {index}: groups {names}, dashboard versions {versions}")
    status = wait_for("three voters and one leader after the restart", 20, lambda: formed(cluster, leader, [1, 2, 3]))
    print(f"cluster status from node {leader}: leader node {status['leader_id']}, term {status['term']}, commit index {status['commit_index']}")
    print(f"e2e-cluster: OK (election after kill -9: {election:.2f} s)")


if __name__ == "__main__":
    main()
