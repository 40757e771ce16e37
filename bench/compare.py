"""herd next to DuckDB (and ClickHouse via chdb, when installed) on the very Parquet files herd
wrote: each engine pinned to the same thread count, a warm-up then N timed runs, answers
checked equal, ratios herd / best other printed.

    python bench/compare.py --herd target/release/herd --data DIR [--project 1] [--runs 5]
        [--queries Q1,Q2,Q3,Q4,Q5] [--threads 2] [--json OUT] [--plot OUT.svg]
        [--probe-cap 30] [--statements Q2=Q2_L,Q3=Q3_L]
    python bench/compare.py --plot-from OUT.json --plot OUT.svg   # redraw an earlier run

The anchors' SQL is ../shared/bench/anchor_queries.py (DD / CH dicts), read as it is. DuckDB
has three formulations of the funnels Q2/Q3 (window functions, list_reduce, ASOF joins): each
runs once, and the fastest is then timed like every other statement (../shared/bench.md).
"""

import argparse
import datetime
import glob
import json
import os
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "shared", "bench"))
import anchor_queries  # noqa: E402


# The anchors' Q4 joins *every* row of the groups table, so a company whose plan changed counts
# under each plan it ever had; herd (and PostHog) use the current properties. The answer check
# uses this statement (latest version per group), the timing uses the anchor's own SQL.
CHECK_DD = {
    "Q4": anchor_queries.DD["Q4"].replace(
        """    SELECT group_key, json_extract_string(group_properties, '$.plan') AS plan
    FROM read_parquet('{gr}')
    WHERE group_type_index = 0""",
        """    SELECT group_key, arg_max(json_extract_string(group_properties, '$.plan'), version) AS plan
    FROM read_parquet('{gr}')
    WHERE group_type_index = 0
    GROUP BY group_key"""),
}


# A formulation slower than this in its probe run is not timed further (DuckDB's ASOF funnel
# takes minutes on 10M events).
PROBE_CAP_S = 30


def herd_run(args):
    """One `herd bench` process per query, so each peak RSS is that query's alone (an
    allocator keeps freed pages, so a later query in the same process would report the
    earlier one's high-water mark)."""
    out = {}
    for q in args.queries:
        cmd = [args.herd, "bench", "--data", args.data, "--project", str(args.project),
               "--runs", str(args.runs), "--threads", str(args.threads), "--format", "json",
               "--queries", q]
        text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        doc = json.loads(text.strip().splitlines()[-1])
        out.update({r["query"]: r for r in doc["queries"]})
    return out


def normal(name, rows):
    """Rows of an anchor query in herd bench's answer form."""
    if name in ("Q2", "Q3"):
        return [int(v) for v in rows[0]]
    if name == "Q5":
        n, users = rows[0]
        return [float(n), float(users)]
    if name == "Q4":
        out = [[str(r[0])[:10], r[1], float(r[2])] for r in rows if r[2]]
        return sorted(out, key=lambda r: json.dumps(r))
    return [[str(r[0])[:10], float(r[1])] for r in rows if r[1]]


def timed(run, runs):
    run()  # warm-up
    times = []
    rows = None
    for _ in range(runs):
        t = time.perf_counter()
        rows = run()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), max(times), rows


def duckdb_engine(threads):
    import duckdb
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    return "duckdb", lambda sql: con.execute(sql).fetchall(), anchor_queries.DD, CHECK_DD, con.interrupt


def chdb_engine(threads):
    import chdb
    from chdb import session
    s = session.Session()

    def run(sql):
        res = s.query(sql + f" SETTINGS max_threads = {threads}", "JSONCompact")
        return json.loads(res.bytes())["data"] if res.bytes() else []
    return "clickhouse", run, anchor_queries.CH, {}, None


ENGINE_COLOURS = [("herd", "#2b8a3e"), ("duckdb", "#f08c00"), ("clickhouse", "#1c7ed6")]


def write_svg(doc, path):
    """Grouped bars of median seconds per query and engine, as a self-contained SVG (no
    plotting dependency); the herd / best ratio is written over each group."""
    results = doc["results"]
    engines = [(e, c) for e, c in ENGINE_COLOURS if any(r.get(e) for r in results)]
    top = max(r[e] for r in results for e, _ in engines if r.get(e)) * 1.15
    w, h, left, bottom, plot_h = 120 * len(results) + 80, 340, 60, 40, 240
    bar = 90 / len(engines)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="18" font-size="14">herd vs DuckDB vs ClickHouse (chdb), '
           f'median s of {doc["runs"]}, {doc["threads"]} threads each, {doc["date"]}</text>']
    y0 = h - bottom
    for k in range(5):
        v = top * k / 4
        y = y0 - plot_h * k / 4
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - 10}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    for i, r in enumerate(results):
        x0 = left + 20 + 120 * i
        for j, (e, colour) in enumerate(engines):
            v = r.get(e) or 0
            bh = plot_h * v / top
            out.append(f'<rect x="{x0 + j * bar:.1f}" y="{y0 - bh:.1f}" width="{bar - 4:.1f}" '
                       f'height="{bh:.1f}" fill="{colour}"><title>{e} {v:.3f} s</title></rect>')
        out.append(f'<text x="{x0 + 45}" y="{y0 + 16}" text-anchor="middle">{r["query"]}</text>')
        top_v = max(r.get(e) or 0 for e, _ in engines)
        out.append(f'<text x="{x0 + 45}" y="{y0 - plot_h * top_v / top - 6:.1f}" '
                   f'text-anchor="middle">{r["ratio"]:.2f}×</text>')
    for j, (e, colour) in enumerate(engines):
        out.append(f'<rect x="{w - 130}" y="{30 + 16 * j}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{w - 115}" y="{39 + 16 * j}">{e}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--herd")
    p.add_argument("--data")
    p.add_argument("--project", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--queries", default="Q1,Q2,Q3,Q4,Q5")
    p.add_argument("--probe-cap", type=float, default=PROBE_CAP_S,
                   help="seconds after which a probe of one DuckDB formulation is interrupted")
    p.add_argument("--statements", default="",
                   help="the DuckDB formulation to time without probing, e.g. Q2=Q2_L,Q3=Q3_L "
                   "(at 100M events each probe takes minutes)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--plot", help="also draw the results as an SVG bar chart here")
    p.add_argument("--plot-from", help="only draw the SVG (--plot) from a --json file of an "
                   "earlier run")
    args = p.parse_args()
    if args.plot_from:
        if not args.plot:
            p.error("--plot-from needs --plot OUT.svg")
        with open(args.plot_from) as f:
            write_svg(json.load(f), args.plot)
        return
    if not args.herd or not args.data:
        p.error("--herd and --data are required")
    args.queries = args.queries.split(",")
    chosen = dict(kv.split("=", 1) for kv in args.statements.split(",") if kv)

    ev = os.path.join(args.data, f"projects/{args.project}/events/**/*.parquet")
    gr = os.path.join(args.data, f"projects/{args.project}/groups/*.parquet")
    n_files = len(glob.glob(ev, recursive=True))

    engines = []
    for make in (duckdb_engine, chdb_engine):
        try:
            engines.append(make(args.threads))
        except ImportError:
            pass

    herd = herd_run(args)
    results = []
    ok = True
    print(f"{n_files} event files under {args.data}; {args.threads} threads per engine; "
          f"median of {args.runs} after a warm-up")
    print(f"{'query':<6} {'herd s':>8} " + " ".join(f"{e[0] + ' s':>13}" for e in engines)
          + f" {'herd/best':>10}  {'herd MiB':>8}  answers")
    for q in args.queries:
        h = herd[q]
        row = {"query": q, "herd": h["median_s"], "herd_peak_rss_mib": h["peak_rss_mib"]}
        others = []
        same = True
        for name, run, sqls, checks, interrupt in engines:
            # One statement, or the engine's formulations of it (Q2_W, Q2_L, …): the best.
            variants = [k for k in sqls if k == q or (k.startswith(q + "_") and name == "duckdb"
                                                       and k[len(q) + 1:] in ("W", "L", "A"))]
            if name == "duckdb" and q in chosen:
                if chosen[q] not in variants:
                    p.error(f"--statements: {chosen[q]} is not a formulation of {q}")
                variants = [chosen[q]]
            if len(variants) > 1:
                # One probe run each (some formulations take many times longer), then the
                # full timing of the fastest.
                probes = {}
                for k in variants:
                    sql = sqls[k].replace("{ev}", ev).replace("{gr}", gr)
                    timer = threading.Timer(args.probe_cap, interrupt) if interrupt else None
                    if timer:
                        timer.start()
                    t = time.perf_counter()
                    try:
                        run(sql)
                        probes[k] = time.perf_counter() - t
                    except Exception:  # interrupted: slower than the cap
                        probes[k] = float("inf")
                    if timer:
                        timer.cancel()
                    # null (strict JSON) for a probe interrupted at the cap.
                    row[f"{name}_{k}_probe"] = (probes[k] if probes[k] != float("inf")
                                                else None)
                variants = [min(probes, key=probes.get)]
            sql = sqls[variants[0]].replace("{ev}", ev).replace("{gr}", gr)
            med, lo, hi, rows = timed(lambda: run(sql), args.runs)
            row[name] = med
            row[f"{name}_statement"] = variants[0]
            others.append(med)
            if q in checks:
                rows = run(checks[q].replace("{ev}", ev).replace("{gr}", gr))
            elif q == "Q4":
                continue  # no current-properties statement for this engine: not compared
            if normal(q, rows) != h["answer"]:
                same = False
                row[name + "_answer_differs"] = True
        best = min(others) if others else float("nan")
        row["ratio"] = h["median_s"] / best if others else None
        row["answers_equal"] = same
        ok &= same
        results.append(row)
        print(f"{q:<6} {h['median_s']:>8.3f} "
              + " ".join(f"{row[e[0]]:>13.3f}" for e in engines)
              + f" {row['ratio']:>10.2f}  {h['peak_rss_mib'] or 0:>8.0f}  {'equal' if same else 'DIFFER'}")
    doc = {"date": datetime.date.today().isoformat(), "data": args.data,
           "threads": args.threads, "runs": args.runs, "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    if args.plot:
        write_svg(doc, args.plot)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
