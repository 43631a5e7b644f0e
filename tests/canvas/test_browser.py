"""The core flow in a real browser: headless Chromium driven by Playwright.

``conductor serve`` runs on a free local port with a fresh SQLite database and the real
asset graph (``dagster_defs.definitions``; ``STARRYNIGHT_DAGSTER_MODULE`` overrides it,
e.g. ``tests.conductor.toy_defs`` for a faster run while working on the pages), so the
run the browser launches processes the sample screen end to end. Screenshots of every
page go to the test's tmp folder (and to ``CANVAS_SCREENSHOTS`` when set, to refresh
docs/screenshots).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import playwright.sync_api as playwright
import pytest

from starrynight import registry
from tests.conductor.conftest import RW


def _behind_gates() -> set[str]:
    behind = {s.name for s in registry.STEPS if s.group == "qc"}
    for s in registry.STEPS:  # registry order is a dependency order
        if set(s.needs) & behind:
            behind.add(s.name)
    return behind - {s.name for s in registry.STEPS if s.group == "qc"}


#: The steps a launch may include while both gates of a plate are closed.
BEFORE_GATES = [s.name for s in registry.STEPS if s.name not in _behind_gates()]

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """``conductor serve`` on a free port; its base URL."""
    port = _free_port()
    env = dict(os.environ)
    env.update(
        STARRYNIGHT_DATA_DIR=str(tmp_path / "conductor"),
        STARRYNIGHT_DATABASE_URL=f"sqlite:///{tmp_path / 'conductor.db'}",
        CONDUCTOR_TOKENS=f"alice:{RW}:rw",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        STARRYNIGHT_DAGSTER_MODULE=os.environ.get(
            "STARRYNIGHT_DAGSTER_MODULE", "dagster_defs.definitions"
        ),
    )
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "conductor"), "serve", "--port", str(port),
         "--upgrade-db", "--log-level", "warning"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/v1/health/live", timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.close()
                raise AssertionError((tmp_path / "server.log").read_text()[-3000:]) from None
            time.sleep(0.2)
    yield base
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture
def browser_page(tmp_path: Path):
    """A page of a fresh headless Chromium profile."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install chromium chromium-driver")
    with playwright.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        page = context.new_page()
        page.set_default_timeout(30_000)
        yield page
        context.close()


def _shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / "screenshots" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    copy_to = os.environ.get("CANVAS_SCREENSHOTS")
    if copy_to:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(copy_to) / path.name)
    assert path.stat().st_size > 5000  # a rendered page, not a blank one
    return path


@pytest.mark.slow
def test_core_flow_in_chromium(server: str, browser_page, small_sample, tmp_path: Path) -> None:
    page = browser_page
    expect = playwright.expect
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

    # Sign in: a wrong token is refused on the page, the right one lands on the projects.
    page.goto(f"{server}/ui/projects")
    expect(page).to_have_url(f"{server}/ui/login?next=%2Fui%2Fprojects")
    page.get_by_label("Token").fill("wrong-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown token")
    page.get_by_label("Token").fill(RW)
    page.get_by_label("Token").press("Enter")
    expect(page.get_by_role("heading", name="Projects")).to_be_visible()
    _shot(page, tmp_path, "01-login-projects")

    # Create a project on the sample dataset; a mistake first, shown next to the field.
    page.get_by_label("Name").fill("demo screen")
    page.get_by_label("Dataset URI").fill(small_sample.dataset_root)
    page.get_by_label("Workspace URI").fill(str(tmp_path / "ws"))
    page.get_by_role("button", name="Create project").click()
    expect(page.locator("#err-name")).to_contain_text("letters, digits")
    page.get_by_label("Name").fill("demo")
    page.get_by_role("button", name="Create project").click()
    expect(page.get_by_role("heading", name="demo")).to_be_visible()

    # Configure: scan, then assign roles with the drop-downs (a clash is refused first).
    page.get_by_role("button", name="Scan the dataset (inventory + index)").click()
    expect(page.get_by_role("status")).to_contain_text("Inventory and index done.")
    expect(page.locator("dl.facts")).to_contain_text("Plate1")
    page.get_by_label("Base C").select_option("A")
    page.get_by_role("button", name="Save roles").click()
    expect(page.locator("#err-sbs-C")).to_contain_text("already base A")
    page.get_by_label("Base C").select_option("C")
    page.get_by_label("Mitochondria").select_option("ZO1-AF488")
    page.get_by_role("button", name="Save roles").click()
    expect(page.get_by_role("status")).to_contain_text("Channel roles saved.")
    _shot(page, tmp_path, "02-configure")

    # A new project holds both QC gates: launching everything is refused, naming the
    # plate and the gate; launch what precedes the gates and watch it on the run page.
    page.get_by_role("link", name="Runs", exact=True).click()
    page.get_by_role("button", name="Launch run").click()
    refused = page.get_by_role("alert")
    expect(refused).to_contain_text("plate Plate1: the painting QC gate is closed")
    for asset in BEFORE_GATES:
        page.get_by_label(asset, exact=True).check()
    page.get_by_role("button", name="Launch run").click()
    expect(page.get_by_role("heading", name="Run 1")).to_be_visible()
    expect(page.locator("#run-status")).to_contain_text("SUCCESS", timeout=300_000)
    expect(page.locator("#log li").first).to_be_visible()
    expect(page.locator("#log")).to_contain_text("ASSET_MATERIALIZATION")
    expect(page.locator("#log-state")).to_have_text("Complete log.")
    assert page.locator("#progress").get_attribute("value") == "100"
    expect(page.locator("#cancel-form")).to_have_count(0)
    _shot(page, tmp_path, "03-run")

    # The QC page shows each gate's report beside its state; approve both gates of the
    # plate with a comment, then launch what is still missing (what follows the gates).
    page.get_by_role("link", name="QC", exact=True).click()
    expect(page.locator(".gate-state").first).to_contain_text("closed")
    image = page.locator(".gate .gallery img").first
    expect(image).to_be_visible()
    for gate in ("painting", "barcoding"):
        page.get_by_label(f"Comment on Plate1 {gate}").fill(f"{gate} pictures look right")
        page.get_by_role("button", name=f"Approve Plate1 {gate}").click()
        expect(page.get_by_role("status")).to_contain_text(f"{gate} gate of Plate1 approved")
    expect(page.locator('.gate-state[data-gate="painting"]')).to_contain_text("open")
    expect(page.locator("table.history").first).to_contain_text("painting pictures look right")
    _shot(page, tmp_path, "03b-gates")
    page.get_by_role("link", name="Runs", exact=True).click()
    page.get_by_label("Only what is missing, failed or stale").check()
    page.get_by_role("button", name="Launch run").click()
    expect(page.get_by_role("heading", name="Run 2")).to_be_visible()
    expect(page.locator("#run-status")).to_contain_text("SUCCESS", timeout=300_000)

    # Plate map: every well done for the last asset; open a well with the keyboard.
    page.get_by_role("link", name="Plate map", exact=True).click()
    well = page.get_by_role("link", name="A1: done")
    expect(well).to_have_text("D")
    _shot(page, tmp_path, "04-platemap")
    well.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Plate Plate1, well A1")).to_be_visible()
    # the latest run that touched the well: the one after the gates were approved
    expect(page.get_by_role("link", name="Run 2")).to_be_visible()
    _shot(page, tmp_path, "05-well")

    # QC gallery: an illumination heat-map is served and decoded by the browser.
    page.get_by_role("link", name="QC", exact=True).click()
    page.get_by_role("link", name="Illumination functions", exact=True).click()
    image = page.locator(".gallery img").first
    expect(image).to_be_visible()
    assert page.evaluate("(img) => img.complete && img.naturalWidth > 0", image.element_handle())
    _shot(page, tmp_path, "06-qc")

    # Results: the run computed the screen's hits; sort the table, open a gene from it.
    page.get_by_role("link", name="Results", exact=True).click()
    expect(page.get_by_role("heading", name="Screen results")).to_be_visible()
    expect(page.locator("#results-summary")).to_contain_text("hit")
    expect(page.locator("svg.volcano circle").first).to_be_attached()
    page.locator("#genes thead").get_by_role("link", name="Cells").click()
    expect(page.locator("#genes th[aria-sort]")).to_contain_text("Cells")
    cells = [int(t) for t in page.locator("#genes tbody tr td:nth-child(2)").all_inner_texts()]
    assert cells and cells == sorted(cells)
    _shot(page, tmp_path, "07-results")
    page.locator("#genes tbody tr td:first-child a").first.click()
    expect(page.get_by_role("heading", name=re.compile(r"^Gene "))).to_be_visible()
    expect(page.locator("#shifts tbody tr").first).to_be_visible()
    montage = page.locator("#montage")
    expect(montage).to_be_visible()
    assert page.evaluate("(img) => img.complete && img.naturalWidth > 0", montage.element_handle())
    _shot(page, tmp_path, "08-gene")

    # An API error reads as a message on the page.
    page.goto(f"{server}/ui/projects/999/plates")
    expect(page.get_by_role("alert")).to_contain_text("project 999 not found")
    # Pages answered with 4xx (wrong token, form errors) are logged as failed loads;
    # anything else is a script error.
    assert not [e for e in console_errors if not e.startswith("Failed to load resource")]
