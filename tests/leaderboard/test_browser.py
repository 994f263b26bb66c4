"""The rendered leaderboard page in a real browser: Debian's headless Chromium, driven over the
DevTools protocol (a tiny client on `websocket-client`, nothing downloaded). It opens index.html
from the file system, sorts a column, opens an entry and a neuron, and checks what is shown; the
screenshot is kept under the test's tmp dir and copied to `test-artifacts/leaderboard.png`."""

from __future__ import annotations

import base64
import io
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from harness import leaderboard as lb
from harness.paths import REPO_ROOT
from tests.leaderboard.test_leaderboard import lb_cells, lb_sets  # noqa: F401  (session fixtures)

websocket = pytest.importorskip("websocket")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (`make test` installs it)")


class CDP:
    """The least of the Chrome DevTools Protocol: send a command, wait for its answer, keep events."""

    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def send(self, method: str, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self):
        self.ws.close()


@pytest.fixture
def chromium(tmp_path):
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "--window-size=1400,1600", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.time() > deadline or proc.poll() is not None:
                pytest.fail("chromium did not start (no DevToolsActivePort)")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        pages = []
        while not pages and time.time() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
                pages = [t for t in json.load(resp) if t["type"] == "page"]
            time.sleep(0.1)
        cdp = CDP(pages[0]["webSocketDebuggerUrl"])
        yield cdp
        cdp.close()
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _wait(cdp: CDP, expression: str, timeout: float = 30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cdp.js(expression):
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {expression}")


def _pixels(cdp: CDP, selector: str) -> list[tuple[int, int, int]]:
    """The pixels of the first element matching `selector`, cut from a screenshot of the viewport
    scrolled to it (a full-page capture would re-flow the page)."""
    from PIL import Image

    box = cdp.js(f"(() => {{ const el = document.querySelector({json.dumps(selector)}); el.scrollIntoView({{block: 'center'}});"
                 " const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom, window.devicePixelRatio]; })()")
    shot = cdp.send("Page.captureScreenshot", format="png")
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
    x0, y0, x1, y1 = (int(v * box[4]) for v in box[:4])
    # The inner part of the box: its edges may blend with the neighbours.
    return list(image.crop((x0 + 1, y0 + 2, max(x0 + 2, x1 - 1), max(y0 + 3, y1 - 2))).getdata())


def test_leaderboard_page_in_headless_chromium(chromium, lb_sets, lb_cells, tmp_path):  # noqa: F811
    cfg = lb.load_config(entries_dir=tmp_path / "board" / "entries", sets_dir=lb_sets)
    for name, explainer in (("top-tokens", "baseline_top_tokens"), ("empty", "baseline_empty")):
        lb.submit(lb_cells[explainer], name, "tests", cfg)
    entry = json.loads((cfg["entries_dir"] / "top-tokens.json").read_text())
    first = entry["neurons"][0]
    # A connection-weight table for the set (what `python -m harness.connections all=true` writes).
    (tmp_path / "board" / "connections").mkdir()
    pd.DataFrame([{"layer": first["layer"], "neuron": first["neuron"], "input_tokens": ["alpha", "beta"],
                   "output_tokens": ["gamma"]}]).to_parquet(tmp_path / "board" / "connections" / "tiny.parquet")
    _, page = lb.render(cfg)  # verifies both (token_match entries are re-verified at every render)

    cdp = chromium
    cdp.send("Runtime.enable")
    cdp.send("Network.enable")
    cdp.send("Page.enable")
    cdp.send("Page.navigate", url=page.as_uri())
    _wait(cdp, "document.readyState === 'complete' && document.querySelectorAll('#board tbody tr').length > 0")

    names = "[...document.querySelectorAll('#board tbody tr')].map(r => r.dataset.name)"
    assert cdp.js(names) == ["top-tokens", "empty"]  # ranked by score, best first
    assert cdp.js("document.querySelector('#board tbody tr .score').textContent") == \
        f"{entry['summary']['scores']['correlation']['mean']:.3f}"
    # Plots from the embedded summaries: per-layer means with CI bands, distributions, cost.
    assert cdp.js("document.querySelectorAll('#layer-svg polyline').length") == 2
    assert cdp.js("document.querySelectorAll('#layer-svg polygon.ci').length") == 2
    assert cdp.js("document.querySelectorAll('#dist-svg g.box').length") == 2
    assert cdp.js("document.querySelectorAll('#cost-svg circle').length") == 2
    assert cdp.js("document.getElementById('unranked-box').hidden") is True  # both entries verified
    # The first load reads index.html only: per-entry and per-neuron data come when a reader asks.
    assert not [u for u in _requested(cdp) if "/data/" in u]

    # Sort by entry name (ascending), then again (descending).
    cdp.js("document.querySelector('#board th[data-key=name]').click()")
    assert cdp.js(names) == ["empty", "top-tokens"]
    assert cdp.js("document.querySelector('#board th[data-key=name]').className") == "sorted-asc"
    cdp.js("document.querySelector('#board th[data-key=name]').click()")
    assert cdp.js(names) == ["top-tokens", "empty"]

    # Entry vs entry scatter, per neuron, on request.
    cdp.js("for (const id of ['scatter-x', 'scatter-y']) document.getElementById(id).value = 'top-tokens';"
           "document.getElementById('scatter-go').click()")
    defined = sum(n["scores"]["correlation.ev_correlation_score"] is not None for n in entry["neurons"])
    _wait(cdp, "document.querySelectorAll('#scatter-svg circle.pt').length > 0")
    assert cdp.js("document.querySelectorAll('#scatter-svg circle.pt').length") == defined

    # Open an entry (its neurons load from data/entries/), then a neuron (addressed as #layer/neuron).
    cdp.js("document.querySelector('#board tr[data-name=\"top-tokens\"]').click()")
    _wait(cdp, "document.querySelectorAll('#neurons tbody tr').length === 8")
    cdp.js(f"document.querySelector('#neurons tr[data-layer=\"{first['layer']}\"][data-neuron=\"{first['neuron']}\"]').click()")
    _wait(cdp, "document.querySelector('#detail h3') !== null")
    assert cdp.js("location.hash") == f"#{first['layer']}/{first['neuron']}"
    assert cdp.js("document.querySelector('#detail h3').textContent") == f"layer {first['layer']}, neuron {first['neuron']}"
    # Every entry's explanation of the neuron, with its scores; the connection-weight tokens.
    rows = cdp.js("[...document.querySelectorAll('#entry-table tbody tr')].map(r => [r.dataset.name, "
                  "r.querySelector('.explanation').textContent])")
    assert rows[0] == ["top-tokens", first["explanation"]] and rows[1][0] == "empty"
    assert '"alpha" "beta"' in cdp.js("document.querySelector('#detail .conn').textContent")
    assert f"{first['scores']['correlation.ev_correlation_score']:.3f}" in cdp.js("document.querySelector('#detail .scores').textContent")
    # Top windows with activations highlighted, and the simulation under each test window.
    assert cdp.js("document.querySelectorAll('#detail .explain-window').length") == 2
    assert cdp.js("document.querySelectorAll('#detail .test-window').length") == 3
    assert cdp.js("document.querySelectorAll('#detail .simulation').length") == 3
    assert cdp.js("[...document.querySelectorAll('#detail .explain-window .tok')].some(t => Number(t.dataset.v) > 0 && t.style.background.startsWith('rgba'))")
    assert cdp.js("[...document.querySelectorAll('#detail .simulation .tok')].some(t => Number(t.dataset.v) === 10)")
    # The screenshot shows the colours: a fully simulated token is orange, the neuron's top real token blue.
    sim = _pixels(cdp, "#detail .simulation .tok[data-v='10']")
    assert sum(r > b + 60 for r, g, b in sim) > len(sim) // 2, sim[:5]
    top = cdp.js("(() => { const ts = [...document.querySelectorAll('#detail .explain-window .tok')];"
                 " const m = Math.max(...ts.map(t => Number(t.dataset.v))); ts.find(t => Number(t.dataset.v) === m).id = 'top-tok';"
                 " return m; })()")
    assert top > 0
    real = _pixels(cdp, "#top-tok")
    assert sum(b > r + 60 for r, g, b in real) > len(real) // 2, real[:5]

    # Sorting the neurons by score puts the best first.
    cdp.js("document.querySelector('#neurons th[data-key=score]').click()")
    shown = cdp.js("[...document.querySelectorAll('#neurons tbody tr td:nth-child(3)')].map(td => td.textContent)")
    numeric = [float(s) for s in shown if s != "n/a"]
    assert numeric == sorted(numeric, reverse=True)

    shot = tmp_path / "leaderboard.png"
    shot.write_bytes(base64.b64decode(cdp.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]))
    artifacts = REPO_ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(shot, artifacts / "leaderboard.png")
    assert shot.stat().st_size > 10_000

    # A link to a neuron opens the viewer on it directly.
    other = entry["neurons"][-1]
    cdp.send("Page.navigate", url=page.as_uri() + f"#{other['layer']}/{other['neuron']}")
    _wait(cdp, f"document.querySelector('#detail h3')?.textContent === 'layer {other['layer']}, neuron {other['neuron']}'")

    errors = [e for e in cdp.events if e.get("method") in ("Runtime.exceptionThrown", "Log.entryAdded")]
    assert not errors, errors
    urls = _requested(cdp)
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls


def _requested(cdp: CDP) -> list[str]:
    cdp.js("1")  # drain pending events
    return [e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"]
