"""Bulk-load throughput: `herd backfill` next to DuckDB and ClickHouse (chdb) doing the least an
engine must do to turn the same PostHog-style export into a file like herd's, all pinned to the
same cores, in alternating rounds, with medians and ratios from the same run.

    python bench/ingest.py --herd target/release/herd --events EXPORT/events \
        [--groups EXPORT/groups.parquet] [--cores 2] [--rounds 3] [--json OUT] [--work DIR]

What each contender does (every one reads the export's Parquet and writes zstd Parquet):
- `herd`: `herd backfill` into an empty data folder: group rules (`$groups` → `$group_N`),
  uuid dedup, actor numbers, files per day sorted by (event, company, person, time),
  checkpoints, the groups table from `--groups`, the compaction at the end.
- `<engine>-load`: one statement that extracts the group keys from `properties.$groups`
  (`--group-types`, in slot order), sorts by (event, `$group_0`, distinct_id, timestamp) and
  writes one zstd Parquet file. No dedup, no actor numbers, no groups table, nothing durable
  until the end: a lower bound on the work of a load like herd's.
- `<engine>-copy`: reads the export and writes it back as zstd Parquet, nothing else: the
  floor of reading and writing these bytes on this machine.

Each run is a child process under `taskset -c 0-(cores-1)` (herd sizes its thread pools from the
affinity mask; the anchors get `threads = cores` too), timed from spawn to exit; CPU time and peak
RSS come from `wait4` on that child. The figures are for comparison within one run only.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

DUCKDB_LOAD = """
COPY (
  SELECT uuid, event, distinct_id, timestamp, properties, {groups}
  FROM read_parquet({src})
  ORDER BY event, "$group_0", distinct_id, timestamp
) TO {out} (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, ROW_GROUP_SIZE 1048576)
"""

DUCKDB_COPY = """
COPY (SELECT * FROM read_parquet({src}))
TO {out} (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, ROW_GROUP_SIZE 1048576)
"""

CH_LOAD = """
INSERT INTO FUNCTION file({out}, Parquet)
SELECT uuid, event, distinct_id, timestamp, properties, {groups}
FROM file({src}, Parquet)
ORDER BY event, `$group_0`, distinct_id, timestamp
SETTINGS max_threads = {threads}, output_format_parquet_compression_method = 'zstd',
  engine_file_truncate_on_insert = 1
"""

CH_COPY = """
INSERT INTO FUNCTION file({out}, Parquet)
SELECT * FROM file({src}, Parquet)
SETTINGS max_threads = {threads}, output_format_parquet_compression_method = 'zstd',
  engine_file_truncate_on_insert = 1
"""


def sql_string(s):
    return "'" + s.replace("'", "''") + "'"


def anchor_program(engine, shape, src, out, threads, group_types):
    """The Python source a child process runs for one anchor run."""
    if engine == "duckdb":
        paths = [sql_string('$."$groups"."' + t + '"') for t in group_types]
        groups = ", ".join(f"coalesce(json_extract_string(properties, {path}), '') AS \"$group_{i}\""
                           for i, path in enumerate(paths))
        sql = (DUCKDB_LOAD if shape == "load" else DUCKDB_COPY).format(
            groups=groups, src=sql_string(src), out=sql_string(out))
        return ("import duckdb\ncon = duckdb.connect()\n"
                f"con.execute('SET threads = {threads}')\ncon.execute({sql!r})\n")
    groups = ", ".join(
        f"JSONExtractString(properties, '$groups', {sql_string(t)}) AS `$group_{i}`"
        for i, t in enumerate(group_types))
    sql = (CH_LOAD if shape == "load" else CH_COPY).format(
        groups=groups, src=sql_string(src), out=sql_string(out), threads=threads)
    return f"import chdb\nchdb.query({sql!r})\n"


def measured(argv, cores):
    """Runs argv pinned to the first `cores` cores: wall seconds from spawn to exit, and the
    child's own CPU time and peak RSS (`wait4` on it; `taskset` execs argv in its place)."""
    pinned = ["taskset", "-c", f"0-{cores - 1}"] + argv if shutil.which("taskset") else argv
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(pinned, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        sys.exit(f"{' '.join(argv[:3])}… failed ({code}):\n{stderr[-4000:]}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
    }, stdout


def count_events(src):
    import pyarrow.parquet as pq
    paths = [src] if os.path.isfile(src) else sorted(
        os.path.join(src, f) for f in os.listdir(src) if f.endswith(".parquet"))
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths), paths


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--herd", required=True)
    p.add_argument("--events", required=True, help="the export's events: a Parquet file or folder")
    p.add_argument("--groups", help="the export's groups table, for herd's --groups")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--group-types", default="company,project,team",
                   help="the group types the anchors extract, in slot order")
    p.add_argument("--contenders",
                   default="herd,duckdb-load,clickhouse-load,duckdb-copy,clickhouse-copy")
    p.add_argument("--work", help="where outputs go while a run lasts (default: a temp dir)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    events, paths = count_events(args.events)
    src_glob = os.path.join(os.path.abspath(args.events), "*.parquet") \
        if os.path.isdir(args.events) else os.path.abspath(args.events)
    group_types = [t for t in args.group_types.split(",") if t]
    contenders = [c for c in args.contenders.split(",") if c]
    work = tempfile.mkdtemp(prefix="herd-ingest-", dir=args.work)
    runs = {c: [] for c in contenders}
    try:
        for r in range(args.rounds):
            for c in contenders:
                out_dir = os.path.join(work, f"{c}-{r}")
                os.makedirs(out_dir)
                if c == "herd":
                    argv = [args.herd, "backfill", "--data", out_dir, args.events]
                    if args.groups:
                        argv += ["--groups", args.groups]
                else:
                    engine, shape = c.split("-")
                    code = anchor_program(engine, shape, src_glob,
                                          os.path.join(out_dir, "out.parquet"), args.cores,
                                          group_types)
                    argv = [sys.executable, "-c", code]
                fig, stdout = measured(argv, args.cores)
                if c == "herd":
                    summary = json.loads(stdout.strip().splitlines()[-1])
                    # Every row of the export is stored or skipped (duplicates, rows a rule
                    # drops): anything else means herd did not read the whole input.
                    accounted = summary.get("events", 0) + summary.get("skipped", 0)
                    if accounted != events:
                        sys.exit(f"herd stored or skipped {accounted} of {events} rows")
                size = sum(os.path.getsize(os.path.join(d, f))
                           for d, _, fs in os.walk(out_dir) for f in fs)
                fig["output_bytes"] = size
                runs[c].append(fig)
                print(f"round {r + 1} {c:16} {fig['wall_s']:7.2f} s  cpu {fig['cpu_s']:6.1f} s  "
                      f"rss {fig['peak_rss_bytes'] / 2**20:7.0f} MiB  out {size / 2**20:6.0f} MiB",
                      file=sys.stderr, flush=True)
                shutil.rmtree(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(f["wall_s"] for f in runs["herd"]) if "herd" in runs else None
    rows = []
    print(f"{events:,} events, {len(paths)} files, {args.cores} cores, {args.rounds} rounds "
          "(medians)")
    print(f"{'contender':16} {'wall s':>8} {'events/s':>10} {'cpu s':>7} {'rss MiB':>8} "
          f"{'out MiB':>8} {'herd/this':>9}")
    for c, figs in runs.items():
        wall = statistics.median(f["wall_s"] for f in figs)
        row = {
            "contender": c,
            "wall_s": wall,
            "walls_s": [f["wall_s"] for f in figs],
            "events_per_s": events / wall,
            "cpu_s": statistics.median(f["cpu_s"] for f in figs),
            "peak_rss_bytes": max(f["peak_rss_bytes"] for f in figs),
            "output_bytes": figs[-1]["output_bytes"],
            "herd_over_this": base / wall if base else None,
        }
        rows.append(row)
        ratio = f"{row['herd_over_this']:9.2f}" if base else ""
        print(f"{c:16} {wall:8.2f} {row['events_per_s']:10,.0f} {row['cpu_s']:7.1f} "
              f"{row['peak_rss_bytes'] / 2**20:8.0f} {row['output_bytes'] / 2**20:8.0f} {ratio}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"events": events, "files": len(paths), "cores": args.cores,
                       "rounds": args.rounds, "contenders": rows}, f, indent=1)


if __name__ == "__main__":
    main()
