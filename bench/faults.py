"""The figures of issue 23's probes, measured against one or more `herd` builds in one run, so a
fix shows as a ratio against the build before it on the same machine.

    python bench/faults.py --herd NEW [--herd OLD ...] [--work DIR] [--json OUT]

Scenarios (each on a fresh data folder, `herd serve` on 127.0.0.1 with ephemeral ports):
- `amplification`: one 8.3 MB `/batch/` of 50 events, each naming 10,000 group types in `$groups`
  (only the public token needed); then three such batches at once while a 1-event capture to the
  same project is timed. Reported: the first batch's seconds, the 1-event capture's seconds under
  that load, peak RSS, bytes of log written, and the warning rows stored.
- `days`: 20 batches of 1,000 events, every event on its own day from 1900-01-01 (20,000 days).
  Reported: the capture's seconds, the shutdown flush's seconds (SIGTERM to exit), the events
  files and the newest catalog version's bytes, peak RSS; then the same load again, `kill -9`
  while its flush runs, and the seconds until the next start opens its ports.
- `outside`: 50 batches of 1,000 events on three days with `--flush-interval-ms 100` and
  `--compact-min-files 2` (so compaction merges while files stay retired), then `kill -9` during
  a flush: the rows a plain DuckDB glob over `events/` counts next to the events acknowledged.

- `capture`: 16 clients posting `/batch/` bodies of 100 events (keep-alive connections) for 10 s,
  WAL fsynced: events acknowledged per second, so the fault handling's cost on the hot path
  shows as a ratio between builds. The Python clients share the 2 cores with the server.

- `fulldisk` (root: mounts a tmpfs): the data folder on a 20 MB tmpfs, the WAL on the large disk,
  16 clients capturing for 30 s (`extra` flags, e.g. `--max-buffer-mb 256`, apply to builds that
  have them): events acknowledged, requests refused, peak RSS; then SIGTERM's exit code, and
  whether a start on the still-full disk opens its ports.
- `walfull` (root): the WAL on a 20 MB tmpfs: events acknowledged until it fills, then the
  filler removed: seconds until capture answers 200 again (up to 20 s), `/_health` while full,
  SIGTERM's exit code.

Peak RSS is the server's VmHWM from /proc, read just before it exits.
"""

import argparse
import concurrent.futures
import datetime
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import requests

TOKEN = "phc_faults_bench_token"
SECRET = "phs_faults_bench_secret"


class Server:
    def __init__(self, herd, data, extra=(), log=None):
        self.log_path = log or os.path.join(data, "..", os.path.basename(data) + ".log")
        self.log = open(self.log_path, "ab")
        args = [herd, "serve", "--data", data, "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            args + list(extra), stdout=subprocess.PIPE, stderr=self.log, env=dict(os.environ, HERD_LOG="info")
        )
        for line in self.proc.stdout:
            doc = json.loads(line)
            if "listening" in doc:
                self.http = "http://" + doc["listening"]["http"]
                break
        else:
            raise RuntimeError("herd serve exited before listening")
        self.startup_s = time.monotonic() - self.started
        self.peak_kb = 0

    def post(self, path, body, timeout=600):
        return requests.post(self.http + path, data=body, headers={"Content-Type": "application/json"}, timeout=timeout)

    def sample_rss(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
        except FileNotFoundError:
            pass

    def terminate(self):
        """SIGTERM; seconds until exit (the shutdown flush)."""
        self.sample_rss()
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        while self.proc.poll() is None:
            self.sample_rss()
            time.sleep(0.02)
        self.log.close()
        return time.monotonic() - t

    def kill9(self):
        self.sample_rss()
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def create_project(herd, data):
    subprocess.run(
        [herd, "project", "create", "--data", data, "--token", TOKEN, "--secret-key", SECRET],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def count_rows(pattern):
    import duckdb

    if not glob.glob(pattern, recursive=True):
        return 0
    return duckdb.execute("SELECT count(*) FROM read_parquet(?)", [pattern]).fetchone()[0]


def uuid(i):
    return f"00000000-0000-4000-8000-{i:012d}"


def amplification(herd, work):
    data = os.path.join(work, "amp")
    create_project(herd, data)
    groups = {f"type{t}": f"key{t}" for t in range(10_000)}

    def batch(first):
        events = [
            {"event": "signed_up", "distinct_id": f"u{i}", "uuid": uuid(i), "timestamp": "2024-01-02T10:00:00Z",
             "properties": {"$groups": groups}}
            for i in range(first, first + 50)
        ]
        return json.dumps({"api_key": TOKEN, "batch": events})

    bodies = [batch(b * 50) for b in range(4)]
    server = Server(herd, data)
    t = time.monotonic()
    status = server.post("/batch/", bodies[0]).status_code
    first_s = time.monotonic() - t
    server.sample_rss()
    one = json.dumps({"api_key": TOKEN, "event": "ping", "distinct_id": "p", "timestamp": "2024-01-02T10:00:00Z"})
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        heavy = [pool.submit(server.post, "/batch/", b) for b in bodies[1:]]
        time.sleep(0.3)
        t = time.monotonic()
        single = server.post("/capture/", one).status_code
        single_s = time.monotonic() - t
        statuses = [f.result().status_code for f in heavy]
        server.sample_rss()
    server.terminate()
    return {
        "batch_bytes": len(bodies[0]),
        "status": [status] + statuses + [single],
        "first_batch_s": round(first_s, 2),
        "one_event_under_load_s": round(single_s, 3),
        "peak_rss_mb": round(server.peak_kb / 1024),
        "log_mb": round(os.path.getsize(server.log_path) / 2**20, 1),
        "warning_rows": count_rows(f"{data}/projects/*/warnings/*.parquet"),
    }


def catalog_sizes(data):
    """{version: bytes} of every catalog version file in `data`."""
    out = {}
    for path in glob.glob(f"{data}/catalog/*/*.json"):
        name = os.path.basename(path)[:-len(".json")]
        if name.isdigit():
            out[int(name)] = os.path.getsize(path)
    return out


def day_batches():
    base = datetime.datetime(1900, 1, 1, 12, tzinfo=datetime.timezone.utc)
    out = []
    for b in range(20):
        events = []
        for k in range(1000):
            i = b * 1000 + k
            ts = (base + datetime.timedelta(days=i)).isoformat()
            events.append({"event": "signed_up", "distinct_id": f"u{i % 97}", "uuid": uuid(i), "timestamp": ts,
                           "properties": {"$groups": {"company": f"c{i % 13}"}}})
        out.append(json.dumps({"api_key": TOKEN, "batch": events}))
    return out


def days(herd, work):
    bodies = day_batches()
    data = os.path.join(work, "days")
    create_project(herd, data)
    slow = ["--flush-interval-ms", "600000"]
    server = Server(herd, data, slow)
    t = time.monotonic()
    statuses = {server.post("/batch/", b).status_code for b in bodies}
    capture_s = time.monotonic() - t
    flush_s = server.terminate()
    first = catalog_sizes(data)
    result = {
        "status": sorted(statuses),
        "capture_s": round(capture_s, 2),
        "shutdown_flush_s": round(flush_s, 2),
        "events_files": len(glob.glob(f"{data}/projects/*/events/*/*.parquet")),
        "catalog_kb": round(max(first.values(), default=0) / 1024),
        "peak_rss_mb": round(server.peak_kb / 1024),
    }
    # Five small flushes after it: what does each later catalog version cost?
    server = Server(herd, data, ["--flush-interval-ms", "200"])
    for b in range(5):
        events = [{"event": "later", "distinct_id": f"u{k}", "uuid": uuid(10**6 + b * 10 + k),
                   "properties": {"$groups": {"company": "c1"}}} for k in range(10)]
        server.post("/batch/", json.dumps({"api_key": TOKEN, "batch": events}))
        time.sleep(0.6)
    server.terminate()
    later = [size for version, size in catalog_sizes(data).items() if version not in first]
    result["later_versions"] = len(later)
    result["later_catalog_kb_max"] = round(max(later, default=0) / 1024, 1)
    # The same load on a fresh folder, killed while its flush runs; then the next start.
    data2 = os.path.join(work, "days-kill")
    create_project(herd, data2)
    server = Server(herd, data2, ["--flush-interval-ms", "1000"])
    for b in bodies:
        server.post("/batch/", b)
    time.sleep(1.0 + flush_s / 2)
    server.kill9()
    restart = Server(herd, data2, slow)
    result["restart_after_kill_s"] = round(restart.startup_s, 2)
    restart.terminate()
    return result


def outside(herd, work):
    data = os.path.join(work, "outside")
    create_project(herd, data)
    server = Server(herd, data, ["--flush-interval-ms", "100", "--compact-interval-ms", "200",
                                 "--compact-min-files", "2"])
    acked = 0
    for b in range(50):
        events = [{"event": "signed_up", "distinct_id": f"u{i}", "uuid": uuid(b * 1000 + i),
                   "timestamp": f"2024-01-0{1 + i % 3}T10:00:00Z"} for i in range(1000)]
        if server.post("/batch/", json.dumps({"api_key": TOKEN, "batch": events})).status_code == 200:
            acked += 1000
        time.sleep(0.05)
    time.sleep(1.0)
    server.kill9()
    return {"acknowledged": acked, "duckdb_glob_rows": count_rows(f"{data}/projects/*/events/**/*.parquet")}


def capture(herd, work, seconds=10.0, clients=16):
    import http.client
    import threading

    data = os.path.join(work, "capture")
    create_project(herd, data)
    server = Server(herd, data)
    host = server.http.removeprefix("http://")
    stop = time.monotonic() + seconds
    counts = [0] * clients

    def client(c):
        conn = http.client.HTTPConnection(host)
        n = 0
        while time.monotonic() < stop:
            events = [{"event": "signed_up", "distinct_id": f"u{c}-{n}-{i}", "uuid": uuid(c * 10**10 + n * 100 + i),
                       "timestamp": "2024-01-02T10:00:00Z",
                       "properties": {"$groups": {"company": f"c{i % 13}"}, "$lib": "posthog-python"}}
                      for i in range(100)]
            body = json.dumps({"api_key": TOKEN, "batch": events})
            conn.request("POST", "/batch/", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                counts[c] += 100
            n += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - t
    server.terminate()
    return {"events_per_s": round(sum(counts) / elapsed), "peak_rss_mb": round(server.peak_kb / 1024)}


class Tmpfs:
    def __init__(self, work, mb):
        self.path = os.path.join(work, f"tmpfs{mb}")
        os.makedirs(self.path)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", self.path], check=True)

    def fill(self):
        f = open(os.path.join(self.path, "filler"), "wb", buffering=0)
        try:
            while True:
                f.write(b"\0" * (1 << 16))
        except OSError:
            pass
        finally:
            try:
                f.close()
            except OSError:
                pass

    def free(self):
        os.remove(os.path.join(self.path, "filler"))

    def close(self):
        subprocess.run(["umount", "-l", self.path])


def load(server, seconds, clients=16):
    """16 clients posting 100-event batches for `seconds`: (acknowledged, refused)."""
    import threading

    stop = time.monotonic() + seconds
    acked, refused = [0] * clients, [0] * clients

    def client(c):
        session = requests.Session()
        n = 0
        while time.monotonic() < stop:
            events = [{"event": "signed_up", "distinct_id": f"u{i}", "uuid": uuid(c * 10**9 + n * 100 + i),
                       "timestamp": "2024-01-02T10:00:00Z", "properties": {"pad": "x" * 300}} for i in range(100)]
            try:
                r = session.post(server.http + "/batch/", data=json.dumps({"api_key": TOKEN, "batch": events}),
                                 headers={"Content-Type": "application/json"}, timeout=30)
                if r.status_code == 200:
                    acked[c] += 100
                else:
                    refused[c] += 1
            except requests.RequestException:
                refused[c] += 1
            server.sample_rss()
            n += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(acked), sum(refused)


def fulldisk(herd, work, extra=()):
    fs = Tmpfs(work, 20)
    try:
        data = os.path.join(fs.path, "data")
        create_project(herd, data)
        wal = os.path.join(work, "wal")
        args = ["--wal-dir", wal, "--flush-interval-ms", "1000"] + list(extra)
        server = Server(herd, data, args, log=os.path.join(work, "fulldisk.log"))
        fs.fill()
        acked, refused = load(server, 30)
        health = requests.get(server.http + "/_health").status_code
        server.terminate()
        result = {"acknowledged": acked, "refused_requests": refused, "health_while_full": health,
                  "peak_rss_mb": round(server.peak_kb / 1024), "sigterm_exit": server.proc.returncode}
        try:
            again = Server(herd, data, args, log=os.path.join(work, "fulldisk2.log"))
            result["starts_on_full_disk"] = True
            again.terminate()
        except (RuntimeError, json.JSONDecodeError):
            result["starts_on_full_disk"] = False
        return result
    finally:
        fs.close()


def walfull(herd, work):
    fs = Tmpfs(work, 20)
    try:
        reserve = os.path.join(fs.path, "reserve")
        with open(reserve, "wb") as f:
            f.write(b"\0" * (4 << 20))
        data = os.path.join(work, "data")
        create_project(herd, data)
        server = Server(herd, data, ["--wal-dir", fs.path, "--flush-interval-ms", "600000"],
                        log=os.path.join(work, "walfull.log"))
        acked, refused = load(server, 15, clients=8)
        health_full = requests.get(server.http + "/_health").status_code
        os.remove(reserve)
        body = json.dumps({"api_key": TOKEN, "batch": [{"event": "ping", "distinct_id": "p",
                                                         "timestamp": "2024-01-02T10:00:00Z"}]})
        t = time.monotonic()
        recovered = None
        while time.monotonic() - t < 20:
            if server.post("/batch/", body).status_code == 200:
                recovered = round(time.monotonic() - t, 2)
                break
            time.sleep(0.1)
        server.terminate()
        return {"acknowledged": acked, "refused_requests": refused, "health_while_full": health_full,
                "recovered_after_s": recovered, "sigterm_exit": server.proc.returncode}
    finally:
        fs.close()


def supported(herd, flags):
    """The flags `herd serve --help` of this build mentions."""
    text = subprocess.run([herd, "serve", "--help"], capture_output=True, text=True).stdout
    return [f for f in flags if f.split("=")[0] in text]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--herd", action="append", required=True)
    p.add_argument("--work", default=tempfile.gettempdir())
    p.add_argument("--json")
    p.add_argument("--only", choices=["amplification", "days", "outside", "capture", "fulldisk", "walfull"])
    p.add_argument("--extra", action="append", default=[],
                   help="flags for fulldisk's herd serve, for builds that have them (e.g. --max-buffer-mb=256)")
    args = p.parse_args()
    results = {}
    for herd in args.herd:
        per = {}
        scenarios = [("amplification", amplification), ("days", days), ("outside", outside),
                     ("capture", capture), ("fulldisk", fulldisk), ("walfull", walfull)]
        for name, fn in scenarios:
            if args.only and name != args.only:
                continue
            if name == "fulldisk":
                fn = lambda h, w: fulldisk(h, w, supported(h, args.extra))  # noqa: E731
            with tempfile.TemporaryDirectory(dir=args.work) as work:
                per[name] = fn(herd, work)
            print(json.dumps({"herd": herd, name: per[name]}), flush=True)
        results[herd] = per
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
