"""Open a Snakemake report in headless Chromium through the DevTools protocol: console errors, the items
the report lists per category, and screenshots.

Used by the report test (``tests/test_report.py``) and to take the README's screenshot:

    .venv/bin/python -m inference_eval.report.browser report.html docs/report.png [--item s2s_table.html]

Needs a Chromium binary (Debian's ``chromium``; ``$CHROMIUM`` overrides) and the ``websockets`` package.
Chromium runs with a fresh profile folder, no sandbox (CI runs as root), no GPU and no network services.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from inference_eval.processes import end_group, start_group

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-port=0", "--remote-allow-origins=*"]

# The report's React app keeps its state in the global `app` and its items in `results` and `categories`
# (snakemake/report/html_reporter/template). These expressions read them.
JS_ITEMS = """JSON.stringify({categories: categories,
  results: Object.fromEntries(Object.entries(results).map(([k, v]) => [k, {name: v.name, labels: v.labels,
                                                                        mime: v.mime_type}]))})"""


class BrowserError(RuntimeError):
    pass


def chromium_binary() -> str:
    """The Chromium to run: ``$CHROMIUM``, else ``chromium`` or ``chromium-browser`` on PATH."""
    for name in filter(None, (os.environ.get("CHROMIUM"), "chromium", "chromium-browser")):
        path = shutil.which(name)
        if path:
            return path
    raise BrowserError("no Chromium found: install Debian's `chromium` package (apt-get install -y chromium) "
                       "or set CHROMIUM to the binary")


class Page:
    """One DevTools session on a page target; events it sees are kept in ``self.events``."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        self.pending: dict[int, asyncio.Future] = {}
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)
            elif "method" in msg:
                self.events.append(msg)

    async def send(self, method: str, timeout: float = 30, **params) -> dict:
        i = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        await self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        msg = await asyncio.wait_for(fut, timeout)
        if "error" in msg:
            raise BrowserError(f"{method}: {msg['error']}")
        return msg.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        res = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise BrowserError(f"evaluating {expression[:80]!r}: {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout} s waiting for {expression!r}")
            await asyncio.sleep(0.2)

    async def screenshot(self, path: str | Path) -> Path:
        res = await self.send("Page.captureScreenshot", format="png")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(res["data"]))
        return path

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (failed loads) seen so far."""
        out = []
        for ev in self.events:
            m, p = ev["method"], ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append("log: " + p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
        return out


@contextlib.asynccontextmanager
async def open_page(url: str, width: int = 1400, height: int = 900, timeout: float = 60):
    """Start Chromium with a fresh profile, open ``url`` in its page and yield a :class:`Page` once the
    load event fired; Chromium and its profile are removed afterwards."""
    from websockets.asyncio.client import connect

    profile = tempfile.mkdtemp(prefix="report-chromium-")
    proc = start_group([chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                        f"--window-size={width},{height}", "about:blank"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            if proc.poll() is not None:
                raise BrowserError(f"chromium exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium did not open its DevTools port within {timeout} s")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = [t for t in json.load(resp) if t.get("type") == "page"]
        if not targets:
            raise BrowserError("chromium has no page target")
        async with connect(targets[0]["webSocketDebuggerUrl"], max_size=None) as ws:
            page = Page(ws)
            for domain in ("Page", "Runtime", "Log"):
                await page.send(f"{domain}.enable")
            await page.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                            deviceScaleFactor=1, mobile=False)
            await page.send("Page.navigate", url=url)
            await page.wait_for("document.readyState === 'complete'", timeout)
            try:
                yield page
            finally:
                page.reader.cancel()
    finally:
        end_group(proc, grace_s=10)  # Chromium and its renderer, GPU and utility processes
        shutil.rmtree(profile, ignore_errors=True)


async def listed_items(page: Page) -> dict[str, dict[str, list[str]]]:
    """Per category and subcategory, the navbar's text after opening it the way a click does: what a
    reader sees listed there. Returns ``{category: {subcategory: text}}``."""
    cats = json.loads(await page.evaluate("JSON.stringify(categories)"))
    out: dict[str, dict[str, str]] = {}
    for cat, subcats in cats.items():
        for sub in subcats:
            # back to the menu first, as a reader's click path does: the list of a subcategory is built
            # when it mounts, so going straight from one subcategory to another would show the old list
            await page.evaluate("app.setView({navbarMode: 'menu'})")
            await asyncio.sleep(0.2)
            await page.evaluate(f"app.setView({{navbarMode: 'subcategory', category: {json.dumps(cat)}, "
                                f"subcategory: {json.dumps(sub)}}})")
            await asyncio.sleep(0.3)
            out.setdefault(cat, {})[sub] = await page.evaluate("document.querySelector('#app').innerText")
    return out


async def show_item(page: Page, name: str) -> None:
    """Open the item whose file name is ``name`` (its category, subcategory and view) as a click would."""
    path = await page.evaluate(f"Object.keys(results).find(k => results[k].name === {json.dumps(name)}) || ''")
    if not path:
        raise BrowserError(f"no report item named {name!r}")
    js = (f"(() => {{ const p = {json.dumps(path)}; for (const [c, subs] of Object.entries(categories)) "
          "for (const [s, items] of Object.entries(subs)) if (items.includes(p)) { "
          "app.setView({navbarMode: 'subcategory', category: c, subcategory: s, "
          "content: results[p].mime_type === 'text/html' ? 'html' : 'img', contentPath: results[p].data_uri, "
          "resultPath: p}); return true; } return false; })()")
    await page.evaluate("app.setView({navbarMode: 'menu'})")  # remount the list (see listed_items)
    await asyncio.sleep(0.2)
    if not await page.evaluate(js):
        raise BrowserError(f"report item {name!r} is in no category")
    await asyncio.sleep(1.0)


async def _screenshot(report: Path, out: Path, item: str | None) -> list[str]:
    async with open_page(report.resolve().as_uri()) as page:
        await page.wait_for("document.querySelector('#app') && document.querySelector('#app').innerText.length > 0")
        if item:
            await show_item(page, item)
        await asyncio.sleep(0.5)
        await page.screenshot(out)
        return page.console_errors()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Screenshot a Snakemake report in headless Chromium.")
    ap.add_argument("report", type=Path)
    ap.add_argument("png", type=Path)
    ap.add_argument("--item", help="file name of an item to open first (e.g. s2s_table.html)")
    args = ap.parse_args(argv)
    if not args.report.is_file():
        ap.error(f"report {args.report} does not exist (make it with snakemake --report report.html)")
    errors = asyncio.run(_screenshot(args.report, args.png, args.item))
    for err in errors:
        print(err, file=sys.stderr)
    print(f"wrote {args.png}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
