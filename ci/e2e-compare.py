#!/usr/bin/env python3
"""Sample-by-sample comparison of Prometheus's and Sextant's query APIs over one past window.

Used by ci/e2e-prometheus after Prometheus has remote-written everything it scraped to
Sextant. Both servers must then hold the same samples, so the same query must answer the same:

- raw samples (`/api/v1/query` of a range selector at a fixed time): the same series, the same
  timestamps, the same values (exactly, and in the same decimal form);
- computed series (`/api/v1/query_range` of rate and sum-by-rate): the same series, the same
  step timestamps, values equal to 1e-9 relative.

The window is chosen from Prometheus's own `up` samples: it starts 5 s after the first scrape
and ends at least 5 s before scraping was stopped (`--stop-ms`), and every evaluation time is
half a scrape interval away from the scrape timestamps. Prometheus 2.42 includes a sample
exactly at the start of a range (`[t-w, t]`), Sextant serves the 3.x rule (`(t-w, t]`); no
sample sits on a boundary, so the difference cannot show.

Usage: e2e-compare.py --prometheus URL --sextant URL --stop-ms MS
Exits 1 with the first differences shown. Standard library only.
"""

import argparse
import json
import math
import sys
import urllib.parse
import urllib.request

SCRAPE_INTERVAL_MS = 1000
MARGIN_MS = 5000
RATE_WINDOW = "15s"
REL_TOLERANCE = 1e-9
DIFFERENCES_SHOWN_MAX = 10
TIMEOUT_S = 30


def get(base, path, params):
    url = base + path + "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        raise SystemExit(f"e2e-compare: {url} answered {error.code}: {error.read()[:300]!r}")
    answer = json.loads(body)
    if answer.get("status") != "success":
        raise SystemExit(f"e2e-compare: {url} did not succeed: {body[:300]!r}")
    return answer["data"]


def seconds(ms):
    return f"{ms // 1000}.{ms % 1000:03d}"


def parse_value(text):
    # Go's FormatFloat(v, 'f', -1, 64) plus NaN/+Inf/-Inf; Python's float() reads all of them.
    return float(text)


def key(metric):
    return "{" + ",".join(f'{n}="{v}"' for n, v in sorted(metric.items())) + "}"


def matrix(data, what):
    if data["resultType"] != "matrix":
        raise SystemExit(f"e2e-compare: {what}: expected a matrix, got {data['resultType']}")
    out = {}
    for series in data["result"]:
        k = key(series["metric"])
        if k in out:
            raise SystemExit(f"e2e-compare: {what}: series {k} appears twice")
        out[k] = [(round(t * 1000), v) for t, v in series["values"]]
    return out


def same_value(a, b, exact):
    if exact:
        return a == b  # the decimal strings: equal strings are equal bits (NaN included)
    x, y = parse_value(a), parse_value(b)
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    if x == y:
        return True
    return abs(x - y) <= REL_TOLERANCE * max(abs(x), abs(y))


def compare(what, prom, sext, exact, differences):
    """Compares two matrices; returns (series, samples) compared, appends differences."""
    samples = 0
    for k in sorted(set(prom) | set(sext)):
        if k not in sext:
            differences.append(f"{what}: series {k} only in Prometheus ({len(prom[k])} samples)")
            continue
        if k not in prom:
            differences.append(f"{what}: series {k} only in Sextant ({len(sext[k])} samples)")
            continue
        p, s = dict(prom[k]), dict(sext[k])
        for t in sorted(set(p) | set(s)):
            samples += 1
            if t not in s:
                differences.append(f"{what}: {k} t={seconds(t)}: Prometheus has {p[t]}, Sextant nothing")
            elif t not in p:
                differences.append(f"{what}: {k} t={seconds(t)}: Sextant has {s[t]}, Prometheus nothing")
            elif not same_value(p[t], s[t], exact):
                differences.append(f"{what}: {k} t={seconds(t)}: Prometheus {p[t]}, Sextant {s[t]}")
    return len(set(prom) & set(sext)), samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--sextant", required=True)
    parser.add_argument("--stop-ms", type=int, required=True, help="wall time scraping was stopped, ms")
    args = parser.parse_args()

    # The window, from Prometheus's own scrapes of node_exporter.
    ups = matrix(get(args.prometheus, "/api/v1/query", {"query": 'up{job="node"}[10m]', "time": seconds(args.stop_ms)}), "up")
    if len(ups) != 1:
        raise SystemExit(f"e2e-compare: expected one up series in Prometheus, got {sorted(ups)}")
    first_scrape_ms = next(iter(ups.values()))[0][0]
    lo = first_scrape_ms + MARGIN_MS + SCRAPE_INTERVAL_MS // 2
    steps = (args.stop_ms - MARGIN_MS - lo) // SCRAPE_INTERVAL_MS
    if steps < 3:
        raise SystemExit(f"e2e-compare: only {steps} s of scraping inside the margins; raise E2E_SECONDS")
    hi = lo + steps * SCRAPE_INTERVAL_MS
    width = f"{steps * SCRAPE_INTERVAL_MS // 1000}s"
    print(f"e2e-compare: window ({seconds(lo)}, {seconds(hi)}], {width}")

    raw = [f'{{job="node"}}[{width}]', f"up[{width}]"]
    computed = [f"rate(node_cpu_seconds_total[{RATE_WINDOW}])", f"sum by (mode) (rate(node_cpu_seconds_total[{RATE_WINDOW}]))"]
    differences = []
    total_series = total_samples = 0
    for query in raw:
        params = {"query": query, "time": seconds(hi)}
        prom = matrix(get(args.prometheus, "/api/v1/query", params), query)
        sext = matrix(get(args.sextant, "/api/v1/query", params), query)
        # A sample exactly at the range's start would be Prometheus 2's alone (see above).
        on_edge = [k for k, v in prom.items() if any(t == hi - steps * SCRAPE_INTERVAL_MS for t, _ in v)]
        if on_edge:
            raise SystemExit(f"e2e-compare: {query}: a scrape sits on the window's start ({on_edge[0]}); the window choice is wrong")
        n_series, n_samples = compare(query, prom, sext, True, differences)
        print(f"e2e-compare: {query}: {n_series} series, {n_samples} samples compared exactly")
        if n_series == 0 or n_samples == 0:
            differences.append(f"{query}: nothing to compare (Prometheus {len(prom)} series, Sextant {len(sext)})")
        total_series += n_series
        total_samples += n_samples
    for query in computed:
        params = {"query": query, "start": seconds(lo), "end": seconds(hi), "step": "1"}
        prom = matrix(get(args.prometheus, "/api/v1/query_range", params), query)
        sext = matrix(get(args.sextant, "/api/v1/query_range", params), query)
        n_series, n_samples = compare(query, prom, sext, False, differences)
        print(f"e2e-compare: {query}: {n_series} series, {n_samples} points compared to {REL_TOLERANCE} relative")
        if n_series == 0 or n_samples == 0:
            differences.append(f"{query}: nothing to compare (Prometheus {len(prom)} series, Sextant {len(sext)})")
        total_series += n_series
        total_samples += n_samples

    print(f"e2e-compare: {total_series} series, {total_samples} samples/points compared in all")
    if differences:
        for line in differences[:DIFFERENCES_SHOWN_MAX]:
            print(f"  {line}", file=sys.stderr)
        if len(differences) > DIFFERENCES_SHOWN_MAX:
            print(f"  … {len(differences) - DIFFERENCES_SHOWN_MAX} more differences", file=sys.stderr)
        raise SystemExit(f"e2e-compare: FAILED: {len(differences)} differences between Prometheus and Sextant")


if __name__ == "__main__":
    main()
