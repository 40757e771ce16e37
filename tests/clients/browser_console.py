"""herd's web console in a real headless Chromium, driven as a person would use it.

    browser_console.py --herd http://127.0.0.1:PORT --key SECRET --queries Q.json --shots DIR

Signs in with a wrong key (the error must show) and then the right one, lists the companies,
searches, opens one company, runs the trend, the funnel and the retention of Q.json (each as
a link whose URL holds the query, as a person would share it) and reads the numbers the page
drew, then opens a request the server refuses (its error must show). Saves a PNG of each
page in DIR and prints one JSON object: the numbers read, the errors shown, the bytes the
console's files weigh on the wire, and the milliseconds from navigation to the first chart.
"""

import argparse
import json
import os
import pathlib
import urllib.parse

from playwright.sync_api import sync_playwright


def numbers(page, selector):
    """The table's cells under its header row, as text, row by row."""
    return page.eval_on_selector_all(
        selector + " tr",
        "rows => rows.slice(1).map(r => [...r.children].map(c => c.textContent))",
    )


def error_text(page):
    page.wait_for_selector("#error:not([hidden])")
    return page.inner_text("#error")


def link(base, page_name, query):
    return base + "/ui/#/" + page_name + "?q=" + urllib.parse.quote(json.dumps(query))


def run(args):
    queries = json.loads(pathlib.Path(args.queries).read_text())
    shots = pathlib.Path(args.shots)
    shots.mkdir(parents=True, exist_ok=True)
    out = {}
    chromium = os.environ.get("HERD_TEST_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        weights = {}
        page.on("response", lambda r: weights.__setitem__(r.url, len(r.body())) if "/ui/" in r.url and r.ok else None)
        console_errors = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

        page.goto(args.herd + "/")
        page.wait_for_selector("form.signin")
        page.fill("input[name=key]", "phc_not_a_secret_key")
        page.click("form.signin button")
        out["bad_key_error"] = error_text(page)
        page.screenshot(path=str(shots / "console-sign-in.png"))

        page.fill("input[name=key]", args.key)
        page.click("form.signin button")
        page.wait_for_selector("#groups-table")
        out["first_groups"] = [r[0] for r in numbers(page, "#groups-table")][:5]
        out["weight_bytes"] = sum(weights.values())
        out["weight_files"] = sorted(urllib.parse.urlparse(u).path for u in weights)
        page.screenshot(path=str(shots / "console-groups.png"))

        page.fill("input[name=search]", args.search)
        page.click("#main form button[type=submit]")
        page.wait_for_function(
            "s => location.hash.includes('search=' + s)", arg=urllib.parse.quote(args.search)
        )
        page.wait_for_selector("#groups-table")
        out["search_rows"] = numbers(page, "#groups-table")
        page.click("#groups-table tr:nth-child(2) a")
        page.wait_for_selector("#group-events")
        out["group_key"] = page.inner_text("#group-key")
        out["group_properties"] = numbers(page, "#group-properties")
        out["group_events"] = len(numbers(page, "#group-events")) + 1
        page.screenshot(path=str(shots / "console-group.png"))

        # A fresh navigation to a trend's link (the tab keeps its key): the time from the
        # navigation's start to its chart drawn.
        page.goto("about:blank")
        page.goto(link(args.herd, "trends", queries["trends"]))
        page.wait_for_selector("#chart[data-drawn=true]")
        out["first_chart_ms"] = page.evaluate(
            "window.herdFirstChart - performance.getEntriesByType('navigation')[0].startTime"
        )
        out["trends"] = numbers(page, "#trends-table")
        out["trends_labels"] = page.eval_on_selector_all(
            "#trends-table tr:first-child th", "c => c.map(x => x.textContent)"
        )
        page.screenshot(path=str(shots / "console-trends.png"))

        page.goto(link(args.herd, "funnel", queries["funnel"]))
        page.wait_for_selector("#funnel-table")
        out["funnel"] = numbers(page, "#funnel-table")
        page.screenshot(path=str(shots / "console-funnel.png"))
        page.goto(link(args.herd, "funnel", dict(queries["funnel"], viz="trends", interval="week")))
        page.wait_for_selector("#chart[data-drawn=true]")
        out["funnel_trends"] = numbers(page, "#funnel-table")
        page.goto(link(args.herd, "funnel", dict(queries["funnel"], viz="time_to_convert")))
        page.wait_for_selector(".bars .bar")
        out["time_to_convert_bins"] = len(page.query_selector_all(".bars .bar"))

        page.goto(link(args.herd, "retention", queries["retention"]))
        page.wait_for_selector("#retention-table")
        out["retention"] = numbers(page, "#retention-table")
        page.screenshot(path=str(shots / "console-retention.png"))

        bad = dict(queries["trends"], interval="fortnight")
        page.goto(link(args.herd, "trends", bad))
        out["bad_request_error"] = error_text(page)
        page.screenshot(path=str(shots / "console-error.png"))
        out["console_errors"] = [e for e in console_errors if "Failed to load resource" not in e]
        browser.close()
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--herd", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--shots", required=True)
    ap.add_argument("--search", default="media")
    run(ap.parse_args())


if __name__ == "__main__":
    main()
