"""A real browser drives the Dagster UI: the lineage graph, a materialization launched by a click,
and the asset's metadata, against `dagster dev` on a throwaway platform built by the main command.

Needs Debian's Chromium (`apt-get install chromium`; path overridable with MLOPS_CHROMIUM) and the
`playwright` package; Playwright's own browser download is never used. Without them the test is
skipped, unless MLOPS_REQUIRE_BROWSER=1 (set by `.ci/run`), then it fails. Screenshots are kept in
`test-artifacts/browser/`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import yaml

from mlops_assets.settings import PROJECT_ROOT
from mlops_assets_tests.projects import project_copy

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("MLOPS_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling Google services on a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "browser"
MONTHS = "2013-01..2013-03"  # the fewest months a split with 1 test and 1 validation month accepts
ASSET = "model_evaluation"
GRAPH_ASSETS = ("training_set", "candidate_model", ASSET)
BACKTEST = "policy_backtest"
UI_TIMEOUT_MS = 30_000
RUN_TIMEOUT_MS = 120_000
SERVER_TIMEOUT_S = 120


def missing_browser() -> str | None:
    """Why the browser cannot run here, or None when it can."""
    if importlib.util.find_spec("playwright") is None:
        return "the `playwright` package is not installed (pip install -e '.[dev]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MLOPS_CHROMIUM)"
    return None


@pytest.fixture()
def browser_available() -> None:
    """Checked before anything else, so a skip costs no pipeline run."""
    reason = missing_browser()
    if reason and os.environ.get("MLOPS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"MLOPS_REQUIRE_BROWSER=1 but {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture()
def platform_env(tmp_path: Path) -> dict[str, str]:
    """Own state folder and Dagster home, small tuning, and a champion made by the main command."""
    state = tmp_path / "state"
    project = project_copy("flights", tmp_path / "project.yaml", **{
        "split.test": 1, "split.validation": 1, "split.min_rows": 300, "gate.min_slice_rows": 300,
        "backtest.initial": 2, "backtest.max_rounds": 60})
    model_name = yaml.safe_load(project.read_text())["model_name"]
    env = {**os.environ, "MLOPS_STATE_DIR": str(state), "DAGSTER_HOME": str(state / "dagster_home"),
           "MLOPS_PROJECT": str(project), "MLOPS_PROFILE": "embedded",
           "MLOPS_EXECUTOR": "in_process", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "mlops_assets", "run", "--periods", MONTHS], env=env,
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Champion: {model_name} version 1" in done.stdout, done.stdout[-2000:]
    # What the UI's "Skip" writes: otherwise a newsletter dialog pops up over the page at a random
    # moment (once a query returns) and closes whatever menu is open.
    nux = state / "dagster_home" / ".nux" / "nux.yaml"
    nux.parent.mkdir(parents=True, exist_ok=True)
    nux.write_text("seen: 1\n")
    return env


def free_port() -> int:
    """A port nobody listens on, so parallel checkouts and a running `make ui` do not collide."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_sigint() -> None:
    """A shell's background job ignores SIGINT; dagster dev maps SIGTERM to SIGINT, so restore it.

    Runs between fork and exec: started before Playwright, whose driver adds a thread.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture()
def dagster_ui(browser_available: None, platform_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """`dagster dev` (webserver, daemon, code server) on a free port; its process group always stops."""
    port, log = free_port(), tmp_path / "dagster_dev.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port)],
            cwd=PROJECT_ROOT, env=platform_env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_default_sigint)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_server(url, server, log)
        yield url
    finally:
        stop_process_group(server)


def wait_for_server(url: str, server: subprocess.Popen, log: Path) -> None:
    """Poll /server_info until the webserver answers; fail early if dagster dev exits."""
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"dagster dev exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"dagster dev did not answer within {SERVER_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop_process_group(server: subprocess.Popen) -> None:
    """SIGTERM the whole group (webserver, daemon, code servers, runs), SIGKILL what lingers."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)  # a code server or run that outlived dagster dev
    server.wait(timeout=10)


def graphql(url: str, query: str, **variables: object) -> dict:
    """Cross-check what the page shows against the server's own API (never used to launch)."""
    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=30)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


RUN_QUERY = """
query Run($runId: ID!) {
  runOrError(runId: $runId) { ... on Run { status assetSelection { path } } }
}"""
LATEST_MATERIALIZATION = """
query Latest($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset { assetMaterializations(limit: 1) {
      runId
      metadataEntries { label ... on FloatMetadataEntry { floatValue } ... on TextMetadataEntry { text }
                       ... on IntMetadataEntry { intValue } }
    } }
  }
}"""


@pytest.fixture()
def page(dagster_ui: str) -> Iterator[Page]:
    """A page of Debian's Chromium under Playwright, started after the server (see _default_sigint)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(UI_TIMEOUT_MS)
        yield page
        with contextlib.suppress(Exception):  # where the page was when the test ended, pass or fail
            shot(page, "99-last-page")
        browser.close()


def shot(page: Page, name: str) -> None:
    """Screenshots go under test-artifacts/, which CI keeps."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def metadata_row(page: Page, key: str) -> Locator:
    """The metadata table's row of one key (a row's accessible name starts with its key cell)."""
    return page.get_by_role("row", name=re.compile(rf"^{re.escape(key)}\s"))


def launch_from_asset_page(page: Page, dagster_ui: str, asset: str) -> str:
    """Click Materialize on the asset's page, follow the toast to the run and wait for it to succeed."""
    from playwright.sync_api import expect

    page.goto(f"{dagster_ui}/assets/{asset}", wait_until="domcontentloaded")
    page.get_by_role("button", name=re.compile(r"^(materialization )?Materialize$")).click()
    toast = page.get_by_role("listitem").filter(has_text=re.compile(r"Launched run [0-9a-f]{8}"))
    toast.get_by_role("link", name="View", exact=True).click()
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    final = page.get_by_text(re.compile(r"^RUN_(SUCCESS|FAILURE|CANCELED)$"))
    expect(final).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(final).to_have_text("RUN_SUCCESS")
    return page.url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]


def test_dagster_ui_graph_launch_and_metadata(page: Page, dagster_ui: str) -> None:
    """The graph shows the training chain, a Materialize click runs the asset, its metadata shows."""
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)

    # Global asset lineage, filtered to the training chain; groups start collapsed, so expand them.
    page.goto(f"{dagster_ui}/asset-groups", wait_until="domcontentloaded")
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    expect(page.locator("svg foreignObject").get_by_text("training", exact=True)).to_be_visible()
    page.locator(".CodeMirror", has=page.get_by_label("Search and filter assets")).click()
    page.keyboard.type(f"key:{GRAPH_ASSETS[0]}+2")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/asset-groups~"))
    page.get_by_role("button", name="settings", exact=True).click()
    toggle = page.get_by_role("menuitem", name=re.compile("(Expand|Collapse) all groups"))
    if "Expand" in toggle.inner_text():
        toggle.click()
    page.keyboard.press("Escape")
    expect(toggle).to_be_hidden()
    graph = page.locator("svg foreignObject")
    for asset in GRAPH_ASSETS:  # each node shows its name and, once its status loads, the materialization
        expect(graph.filter(has=page.get_by_text(asset, exact=True))).to_contain_text("Materialized")
    shot(page, "01-asset-graph")

    # Launch from the asset page with a click; the toast's View link opens the run.
    run_id = launch_from_asset_page(page, dagster_ui, ASSET)
    shot(page, "02-run")
    run = graphql(dagster_ui, RUN_QUERY, runId=run_id)["runOrError"]
    assert run == {"status": "SUCCESS", "assetSelection": [{"path": [ASSET]}]}

    # The asset page shows the metadata of the run just launched.
    latest = graphql(dagster_ui, LATEST_MATERIALIZATION, path=[ASSET])["assetOrError"]["assetMaterializations"][0]
    assert latest["runId"] == run_id
    entries = {e.pop("label"): next(iter(e.values()), None) for e in latest["metadataEntries"]}
    page.goto(f"{dagster_ui}/assets/{ASSET}", wait_until="domcontentloaded")
    expect(page.get_by_text("Metadata", exact=True)).to_be_visible()
    for key in ("test_auc", "champion_version", "verdict"):
        expect(metadata_row(page, key)).to_contain_text(str(entries[key]))
    assert entries["test_auc"] > 0.5
    shot(page, "03-asset-metadata")

    # The policy backtest, launched from its asset page: its plot renders in the metadata.
    launch_from_asset_page(page, dagster_ui, BACKTEST)
    page.goto(f"{dagster_ui}/assets/{BACKTEST}", wait_until="domcontentloaded")
    expect(metadata_row(page, "summary")).to_contain_text("every_period")
    metadata_row(page, "plot").get_by_text("Show Markdown").click()  # a long value opens in a dialog
    plot = page.get_by_role("img", name="live metric by policy")
    expect(plot).to_be_visible()
    plot.scroll_into_view_if_needed()
    assert plot.evaluate("img => img.naturalWidth") > 100  # decoded, not a broken image
    shot(page, "04-backtest-plot")
