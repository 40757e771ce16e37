"""The suite on a cluster: herd in one process, then on 1, 2, … `herd worker`s on this
machine (each its own process on 127.0.0.1), in one run; per query the median time, its ratio
to the single process, the answers checked equal, and from `EXPLAIN ANALYZE` the plan's stages,
tasks and the bytes its shuffles moved.

    python bench/cluster.py --herd target/release/herd --data DIR [--workers 1,2]
        [--runs 5] [--queries Q1,Q2,Q3,Q4,Q5] [--threads 2] [--partitions 2] [--json OUT]

On a machine with fewer cores than workers × partitions the workers share the cores: the
ratios then measure the cost of distributing (plans sent, shuffles over loopback), not a
speed-up.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time


def start_worker(herd, data, partitions):
    p = subprocess.Popen(
        [herd, "worker", "--data", data, "--listen", "127.0.0.1:0", "--partitions", str(partitions)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "HERD_LOG": "warn"})
    for line in p.stdout:
        v = json.loads(line)
        if "listening" in v:
            return p, "http://" + v["listening"]["worker"]
    raise RuntimeError("herd worker did not start")


def bench(herd, data, queries, runs, threads, workers=None):
    cmd = [herd, "bench", "--data", data, "--queries", ",".join(queries), "--runs", str(runs),
           "--threads", str(threads), "--format", "json"]
    if workers:
        cmd += ["--workers", ",".join(workers)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return {q["query"]: q for q in json.loads(out.stdout)["queries"]}


def explain(herd, data, query, threads, workers):
    """The distributed plan of `query` with its metrics (stages, tasks, bytes moved)."""
    cmd = [herd, "bench", "--data", data, "--queries", query, "--runs", "0", "--explain-analyze",
           "--threads", str(threads), "--format", "json", "--workers", ",".join(workers)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out.stderr


UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}


def shuffle_bytes(plan):
    """Bytes the network boundaries received (their `bytes_transferred`), and plan bytes sent."""
    moved = 0.0
    for m in re.finditer(r"bytes_transferred=([0-9.]+) ?(B|KB|MB|GB)", plan):
        moved += float(m.group(1)) * UNITS[m.group(2)]
    sent = 0.0
    for m in re.finditer(r"plan_bytes_sent=\{[^}]*?([0-9.]+) ?(B|KB|MB|GB)", plan):
        sent += float(m.group(1)) * UNITS[m.group(2)]
    stages = len(re.findall(r"Stage \d+ ── tasks=", plan))
    return moved, sent, stages


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--herd", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--queries", default="Q1,Q2,Q3,Q4,Q5")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    queries = a.queries.split(",")
    results = {"single": bench(a.herd, a.data, queries, a.runs, a.threads)}
    plans = {}
    for n in [int(x) for x in a.workers.split(",")]:
        procs = [start_worker(a.herd, a.data, a.partitions) for _ in range(n)]
        try:
            urls = [u for _, u in procs]
            results[f"{n} workers"] = bench(a.herd, a.data, queries, a.runs, a.threads, urls)
            plans[n] = {q: explain(a.herd, a.data, q, a.threads, urls) for q in queries}
        finally:
            for p, _ in procs:
                p.send_signal(signal.SIGTERM)
                p.wait()
    single = results["single"]
    cols = list(results)
    print(f"{len(queries)} queries, median of {a.runs}; ratio = time / single process; "
          f"answers checked equal to the single process")
    print("query  " + "  ".join(f"{c:>16}" for c in cols) + "  " +
          "  ".join(f"{f'{n}w stages/shuffled':>22}" for n in plans))
    failed = False
    for q in queries:
        cells = []
        for c in cols:
            r = results[c][q]
            same = r["answer"] == single[q]["answer"]
            failed |= not same
            ratio = r["median_s"] / single[q]["median_s"]
            cells.append(f"{r['median_s']:7.3f}s {ratio:5.2f}x{'' if same else '!'}")
        extra = []
        for n in plans:
            moved, sent, stages = shuffle_bytes(plans[n][q])
            extra.append(f"{stages} / {moved / 1e6:8.2f} MB")
        print(f"{q:<6} " + "  ".join(f"{c:>16}" for c in cells) + "  " +
              "  ".join(f"{e:>22}" for e in extra))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "results": results,
                       "plans": {str(n): p for n, p in plans.items()}}, f, indent=1)
    if failed:
        print("answers differ (marked !)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
