"""posthog-js (the npm package's browser bundle, dist/array.js) in a real headless Chromium,
on a page served from another origin than herd.

    browser_posthog_js.py --herd http://127.0.0.1:PORT --token T --user U --flag KEY

The page runs PostHog's documented group set-up (`init` with `loaded` calling identify and
two `group()` calls), then the script drives it: two custom events, the initial pageview, an
autocaptured click, a group flag read with `isFeatureEnabled`, `reset()` and one more event.
It waits until every captured event has gone out, and prints one JSON object: the network
log (method, URL, status of every request), failed requests, console errors, the flag value,
the events posthog-js captured, and the distinct ids before and after the reset.
"""

import argparse
import gzip
import http.server
import json
import os
import pathlib
import threading
import time

from playwright.sync_api import sync_playwright

CLIENTS = pathlib.Path(__file__).resolve().parent
BUNDLE = CLIENTS / "node_modules/posthog-js/dist/array.js"
# A desktop Chrome's user agent: posthog-js drops events from user agents it takes for bots,
# headless Chromium's own included, as it would on a real site.
USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/148.0.0.0 Safari/537.36")

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>herd + posthog-js</title></head>
<body>
<h1>Reports</h1>
<button id="buy" class="buy-button">Buy now</button>
<script src="/array.js"></script>
<script>
  window.__captured = [];
  posthog.init(%(token)s, {
    api_host: %(herd)s,
    before_send: (event) => { window.__captured.push(event.event); return event },
    loaded: (ph) => {
      ph.identify(%(user)s);
      ph.group('company', 'id:5');
      ph.group('playlist', 'id:77', { length: 77, some: 'properties' });
      window.__loaded = true;
    },
  });
</script>
</body></html>
"""


def serve_page(herd, token, user):
    page = PAGE % {"token": json.dumps(token), "herd": json.dumps(herd), "user": json.dumps(user)}
    bundle = BUNDLE.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/":
                body, kind = page.encode(), "text/html; charset=utf-8"
            elif self.path == "/array.js":
                body, kind = bundle, "application/javascript"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # `localhost` and another port: a different origin from herd's 127.0.0.1.
    return server, f"http://localhost:{server.server_address[1]}/"


class Log:
    """Every request the page makes, with its status once it finishes, and the events in it.

    Playwright's sync API hands these over only while the script is inside one of its calls,
    so waits go through `page.wait_for_timeout`, never `time.sleep`.
    """

    def __init__(self, page):
        self.entries = []
        self.failed = []
        self.console = []
        self.in_flight = 0
        page.on("request", self.started)
        page.on("requestfinished", self.finished)
        page.on("requestfailed", self.failed_request)
        page.on("console", self.console_message)
        page.on("pageerror", lambda e: self.console.append({"type": "pageerror", "text": str(e)}))

    def started(self, request):
        self.in_flight += 1

    def finished(self, request):
        self.in_flight -= 1
        response = request.response()
        entry = {"method": request.method, "url": request.url,
                 "status": response.status if response else None}
        if "/flags" in request.url:
            entry["body"] = body_of(request)
        elif "/e/" in request.url:
            body = body_of(request)
            events = body if isinstance(body, list) else body.get("batch", [body])
            entry["events"] = [e.get("event") for e in events]
        self.entries.append(entry)

    def failed_request(self, request):
        self.in_flight -= 1
        self.failed.append({"method": request.method, "url": request.url, "error": request.failure})

    def console_message(self, message):
        if message.type in ("error", "warning"):
            self.console.append({"type": message.type, "text": message.text})

    def sent(self):
        return [name for e in self.entries for name in e.get("events", [])]


def body_of(request):
    """A request's JSON body; posthog-js gzips it when the config allows."""
    raw = request.post_data_buffer or b""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        return json.loads(raw)
    except ValueError:
        return {"unreadable": raw[:200].decode("utf-8", "replace")}


def wait_until(page, what, check, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        page.wait_for_timeout(50)


def run(args):
    server, url = serve_page(args.herd, args.token, args.user)
    chromium = os.environ.get("HERD_TEST_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--disable-blink-features=AutomationControlled"])
        context = browser.new_context(user_agent=USER_AGENT)
        page = context.new_page()
        log = Log(page)
        page.goto(url)
        page.wait_for_function("window.__loaded === true")
        assert page.evaluate("posthog._is_bot()") is False, "posthog-js takes the browser for a bot"

        page.evaluate("posthog.capture('report_viewed', { report: 'weekly' })")
        page.evaluate("posthog.capture('invite_sent', { seats: 3 })")
        # Autocapture starts once the remote config has switched it on.
        page.wait_for_function("posthog.autocapture && posthog.autocapture.isEnabled === true")
        page.click("#buy")
        page.wait_for_function("window.__captured.includes('$autocapture')")

        # The flags reload that carries both groups; the group flag turns on with it.
        page.wait_for_function(
            f"posthog.isFeatureEnabled({json.dumps(args.flag)}, {{ send_event: false }}) === true",
            timeout=20000)
        flag = page.evaluate(f"posthog.isFeatureEnabled({json.dumps(args.flag)})")
        before = page.evaluate("posthog.get_distinct_id()")

        page.evaluate("posthog.reset()")
        after = page.evaluate("posthog.get_distinct_id()")
        page.evaluate("posthog.capture('after_reset')")
        wait_until(page, "the last event to go out",
                   lambda: "after_reset" in log.sent() and log.in_flight == 0)
        captured = page.evaluate("window.__captured")
        browser.close()
    server.shutdown()
    print(json.dumps({
        "network": log.entries,
        "failed": log.failed,
        "console": log.console,
        "flag": flag,
        "captured": captured,
        "sent": log.sent(),
        "distinct_id_before_reset": before,
        "distinct_id_after_reset": after,
        "page": url,
    }))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--herd", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--flag", required=True)
    run(p.parse_args())


if __name__ == "__main__":
    main()
