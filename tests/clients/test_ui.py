#!/usr/bin/env python3
"""tests/clients/test_ui.py — the memory inspector (/ui) in a real headless browser.

Debian's chromium + chromium-driver + python3-selenium (run with the system python3, where apt puts
selenium). Starts the real daemon with --token on a free port, seeds two sessions with
clients/python/memattn.py, then in the browser: enters the token, opens a session, queries, edits a
slot (sees the new version in the timeline and in the query's evidence), hits a 412 after an edit
behind its back, evicts (the query's route changes), restores and protects. Fails on any JavaScript
error or CSP violation in the browser console. Saves a screenshot to $MEMATTN_UI_SCREENSHOT (default
build/ui.png; docs/ui.png is made with MEMATTN_UI_SCREENSHOT=docs/ui.png).

Prints "skip: ..." and exits 0 when the browser stack is not installed. Closing line:
"ui: N passed, N failed".
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))
sys.path.insert(0, HERE)

import memattn  # noqa: E402
from daemon import Daemon  # noqa: E402

CHROMIUM = os.environ.get("MEMATTN_CHROMIUM", "/usr/bin/chromium")
DRIVER = os.environ.get("MEMATTN_CHROMEDRIVER", "/usr/bin/chromedriver")
TOKEN = "ui-test-token"
WAIT = 30  # seconds a condition may take to appear (a bound, not a measurement)


def skip(why: str) -> None:
    print(f"skip: ui test: {why}")
    print("ui: 0 passed, 0 failed, 1 skipped")
    sys.exit(0)


try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    skip("python3-selenium is not installed (apt-get install python3-selenium)")
if not (os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK)):
    skip(f"{CHROMIUM} or {DRIVER} missing (apt-get install chromium chromium-driver)")


def seed(base: str) -> None:
    c = memattn.Client(base, token=TOKEN)
    s = c.create_session("demo", {"dim": 64, "slots": 8})
    s.append([
        {"text": "the Eiffel tower is 330 metres tall", "payload": "330 m"},
        {"text": "the river of Paris is the Seine", "payload": "Seine", "slot": "river_of_paris"},
        {"text": "Paris is the capital and largest city of France", "payload": "Paris (archive)"},
    ])
    s.write_slot("capital_of_france", payload="Paris")
    s.write_slot("tallest_building", payload={"name": "Burj Khalifa", "m": 828}, v=[0.125] * 64)
    notes = c.create_session("notes", {"dim": 32, "heads": 2})
    notes.append([{"text": "note %d" % i, "payload": "n%d" % i} for i in range(5)])
    c.close()


class UI:
    def __init__(self, base: str, profile: str) -> None:
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                  "--window-size=1360,1000", "--user-data-dir=" + profile):
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.d = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
        self.base = base
        self.wait = WebDriverWait(self.d, WAIT)

    def q(self, css: str):
        return self.wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))

    def click(self, css: str) -> None:
        self.wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, css))).click()

    def text_in(self, css: str, text: str) -> None:
        self.wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))

    def until(self, fn, what: str):
        return WebDriverWait(self.d, WAIT).until(lambda d: fn(), message=what)

    def versions(self) -> list:
        return self.d.execute_script(
            "return [...document.querySelectorAll('#timeline .ver .lbl')].map(e => e.textContent)")

    def query(self, text: str, route: str = "") -> None:
        old = self.d.find_elements(By.CSS_SELECTOR, "#query-route-badge")
        box = self.q("#query-text")
        box.clear()
        box.send_keys(text)
        Select(self.q("#query-route")).select_by_value(route)
        self.click("#query-run")
        if old:
            self.wait.until(EC.staleness_of(old[0]))
        self.q("#query-route-badge")

    def console_errors(self) -> list:
        out = []
        for e in self.d.get_log("browser"):
            if e.get("level") == "SEVERE" and "Failed to load resource" not in e.get("message", ""):
                out.append(e["message"])
        return out


def run(ui: UI, base: str) -> None:
    d = ui.d
    d.get(base + "/ui")
    # The API wants the token: the page asks for it.
    ui.wait.until(lambda _: d.execute_script("return document.getElementById('token-dialog').open"))
    ui.q("#token-input").send_keys(TOKEN)
    ui.click("#token-save")
    ui.q('#sessions li[data-id="demo"]')
    assert d.execute_script("return sessionStorage.getItem('memattn.token')") == TOKEN
    ui.q('#sessions li[data-id="notes"]')
    ui.click('#sessions li[data-id="demo"]')
    ui.text_in("#session-title", "demo")
    ui.text_in("#stat-length", "3")
    ui.q('#slots tr[data-name="capital_of_france"]')
    ui.q('#slots tr[data-name="river_of_paris"]')
    assert len(d.find_elements(By.CSS_SELECTOR, "#norms tbody tr")) == 1

    # The query box shows the route and the evidence.
    ui.query("capital of France")
    assert ui.q("#query-route-badge").text == "slot"
    ui.text_in("#query-evidence", "capital_of_france version 1")
    ui.query("how tall is the Eiffel tower")
    assert ui.q("#query-route-badge").text == "sparse", ui.q("#query-route-badge").text
    ui.text_in("#query-evidence", "pointer event #0")
    ui.text_in("#query-payload", "330 m")

    # A slot: history timeline and payload; overwrite with If-Match -> v2.
    ui.click('#slots tr[data-name="capital_of_france"]')
    ui.text_in("#slot-title", "capital_of_france")
    ui.until(lambda: ui.versions() == ["v1"], "timeline v1")
    ui.text_in("#version-payload", "Paris")
    box = ui.q("#payload-input")
    box.clear()
    box.send_keys("Paris, France")
    ui.click("#btn-overwrite")
    ui.until(lambda: ui.versions() == ["v1", "v2"], "timeline v1 v2")
    ui.text_in("#slot-badges", "current v2")
    ui.text_in("#version-payload", "Paris, France")
    ui.text_in("#status", "is now v2")
    ui.query("capital of France")
    ui.text_in("#query-evidence", "capital_of_france version 2")
    ui.text_in("#query-payload", "Paris, France")

    # Someone else writes v3: the page still shows v2, its overwrite is refused (412) and it reloads.
    memattn.Client(base, token=TOKEN).session("demo").put_slot("capital_of_france", "Paris (API)")
    box = ui.q("#payload-input")
    box.clear()
    box.send_keys("Lyon")
    ui.click("#btn-overwrite")
    ui.text_in("#status", "changed since it was shown")
    ui.until(lambda: ui.versions() == ["v1", "v2", "v3"], "timeline v1 v2 v3")
    ui.text_in("#version-payload", "Paris (API)")

    # Evict: a tombstone in the timeline, and the query's route changes from slot to the archive.
    ui.click("#btn-evict")
    ui.until(lambda: ui.versions() == ["v1", "v2", "v3", "✕4"], "timeline with tombstone")
    ui.text_in("#slot-badges", "evicted")
    assert not d.find_elements(By.CSS_SELECTOR, '#slots tr[data-name="capital_of_france"]')
    ui.query("capital of France")
    route = ui.q("#query-route-badge").text
    assert route == "sparse", route
    ui.text_in("#query-evidence", "pointer event")

    # Restore v2 (a new version 5), then protect it.
    ui.click('#timeline .ver[data-version="2"]')
    ui.text_in("#btn-restore", "Restore v2")
    ui.click("#btn-restore")
    ui.until(lambda: ui.versions() == ["v1", "v2", "v3", "✕4", "v5"], "timeline after restore")
    ui.text_in("#slot-badges", "current v5")
    ui.click("#btn-protect")
    ui.text_in("#slot-badges", "protected")
    ui.text_in('#slots tr[data-name="capital_of_france"]', "protected")
    assert not ui.q("#btn-overwrite").is_enabled()

    # Write a new slot from the form.
    ui.q("#new-name").send_keys("capital_of_spain")
    ui.q("#new-payload").send_keys("Madrid")
    ui.click("#btn-write")
    ui.q('#slots tr[data-name="capital_of_spain"]')
    ui.text_in("#slot-title", "capital_of_spain")

    # Back to the edited slot for the picture: timeline, payload, a slot-routed query.
    ui.click('#slots tr[data-name="capital_of_france"]')
    ui.until(lambda: len(ui.versions()) == 5, "timeline back")
    ui.text_in("#version-payload", "Paris, France")
    ui.query("capital of France")
    ui.text_in("#query-evidence", "capital_of_france version 5")
    errs = ui.console_errors()
    assert not errs, errs
    shot = os.environ.get("MEMATTN_UI_SCREENSHOT", "build/ui.png")
    os.makedirs(os.path.dirname(shot) or ".", exist_ok=True)
    d.set_window_size(1360, d.execute_script("return document.documentElement.scrollHeight") + 140)
    d.save_screenshot(shot)
    print(f"screenshot: {shot}")


def main() -> int:
    profile = tempfile.mkdtemp(prefix="memattn-ui-profile-")
    failed = 0
    with Daemon(["--token", TOKEN]) as dm:
        seed(dm.base)
        ui = None
        try:
            ui = UI(dm.base, profile)
            run(ui, dm.base)
            print("ok   ui: token, sessions, query evidence, overwrite with If-Match, 412, evict, restore, protect, write")
        except Exception:
            failed = 1
            print("FAIL ui")
            traceback.print_exc()
            if ui is not None:
                try:
                    ui.d.save_screenshot("build/ui-failed.png")
                    print("browser console:", ui.d.get_log("browser"))
                    print("status line:", ui.d.find_element(By.ID, "status").text)
                except Exception:
                    pass
        finally:
            if ui is not None:
                ui.d.quit()
            shutil.rmtree(profile, ignore_errors=True)
    print(f"ui: {1 - failed} passed, {failed} failed")
    return failed


if __name__ == "__main__":
    sys.exit(main())
