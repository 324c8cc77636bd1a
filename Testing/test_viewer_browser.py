"""duald-view in a real browser: Debian's chromium, driven by Playwright (no browser download).

One viewer server (a subprocess, as a user starts it) serves every test here; the pixels asserted on
are the PNG frames trame-slicer streams into the page, read back from the page's <img> elements.
``DUALD_VIEW_SCREENSHOT=path`` saves the glioma page as the README screenshot.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("trame_slicer", reason="the viewer extra (trame-slicer) is not installed")
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright (the Python package) is not installed")
from _viewer_data import labels_for, small_volume, write_bad_inputs  # noqa: E402
from conftest import SHARED_DATA  # noqa: E402
from PIL import Image  # noqa: E402  # pillow comes with trame-slicer

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROOT = Path(__file__).resolve().parents[1]
GLIOMA = SHARED_DATA / "brain-mri" / "BraTS-GLI-00001-000"
RUN_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("viewer_data")
    small = small_volume((16, 80, 80))
    sitk.WriteImage(small, str(folder / "small_t1.nii.gz"))
    sitk.WriteImage(labels_for(small), str(folder / "small_seg.nii.gz"))
    # Big enough that a run lasts seconds, so Cancel and a disconnect land mid-run.
    sitk.WriteImage(small_volume((150, 240, 240)), str(folder / "big_t1.nii.gz"))
    write_bad_inputs(folder / "bad")
    return folder


@pytest.fixture(scope="module")
def server(data):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(ROOT / d) for d in
                                                       ("DualDSynthesis", "DualDTraining", "DualDView")))
    log = open(data / "server.log", "w")  # noqa: SIM115  # closed below, after the server
    process = subprocess.Popen([sys.executable, "-m", "DualDViewLib.cli", "--port", str(port), "--device", "cpu"],
                               cwd=data, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, (data / "server.log").read_text()[-3000:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    else:
        pytest.fail("duald-view did not start listening within 120 s")
    yield url, process
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no system chromium (apt-get install chromium; .ci/run does this)")
    with playwright_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()


def open_page(browser, url: str):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#synthesize", timeout=60_000)
    return page


# A state change that alters the picture shows within this on a loaded 2-core machine (seen: up to a few s).
CHANGE_WAIT_S = 15.0


def set_state(page, **values) -> None:
    for key, value in values.items():
        page.evaluate("([k, v]) => window.trame.state.set(k, v)", [key, value])


def state(page, key: str):
    return page.evaluate("(k) => window.trame.state.get(k)", key)


def load(page, kind: str, path: Path) -> None:
    page.fill(f"#{kind}-path", str(path))
    page.click(f"#{kind}-load")
    page.wait_for_function("(t) => document.querySelector('#status').innerText.includes(t)",
                           arg=f"Loaded {kind} {path.name}", timeout=60_000)


def wait_idle(page, timeout_s: float = RUN_TIMEOUT_S) -> str:
    page.wait_for_function("() => !window.trame.state.get('running')", timeout=timeout_s * 1000)
    return page.inner_text("#status")


def view_pixels(page, index: int = 0) -> np.ndarray:
    """The frame shown by slice view ``index`` (0 axial, 1 coronal, 2 sagittal), RGB, as the page holds it."""
    data_url = page.evaluate("""(i) => {
        const img = document.querySelectorAll('#views img.image-display-area')[i];
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL('image/png'); }""", index)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def settled_view(page, index: int = 0, timeout_s: float = 60, before: np.ndarray | None = None) -> np.ndarray:
    """The view's frame once the server has re-rendered after a state change and the frame stops changing.

    ``before``: the frame shown before the change. The wait is then first for the picture to differ from it (the
    re-render's event; on a loaded machine the server may take seconds to send it, and the frame read at once is
    still the old one), for at most ``CHANGE_WAIT_S``, as a change can leave the picture as it was; then for two
    reads in a row to agree."""
    deadline = time.monotonic() + timeout_s
    current = view_pixels(page, index)
    if before is not None:
        change_deadline = min(deadline, time.monotonic() + CHANGE_WAIT_S)
        while (current.shape == before.shape and np.array_equal(current, before)
               and time.monotonic() < change_deadline):
            time.sleep(0.2)
            current = view_pixels(page, index)
    while time.monotonic() < deadline:
        time.sleep(0.7)
        latest = view_pixels(page, index)
        if latest.shape == current.shape and np.array_equal(latest, current):
            return latest
        current = latest
    return current


def change_and_settle(page, **values) -> np.ndarray:
    """Set trame state and return the view's frame once the server has shown the change."""
    before = view_pixels(page, 0)
    set_state(page, **values)
    return settled_view(page, before=before)


def overlay_mask(page, plain: np.ndarray, **values) -> np.ndarray:
    shown = change_and_settle(page, **values)
    assert shown.shape == plain.shape
    return np.abs(shown.astype(int) - plain.astype(int)).max(axis=2) > 12


def qa_rows(page) -> list[str]:
    return [r.inner_text().split("\t")[0].strip() for r in page.query_selector_all("#qa-table tbody tr")]


def synthesize(page) -> str:
    page.click("#synthesize")
    page.wait_for_function("() => window.trame.state.get('running')", timeout=30_000)
    return wait_idle(page)


def assert_overlay_follows_threshold(page) -> None:
    """Heat colours appear where the heatmap is above the threshold and nowhere the threshold hides."""
    plain = change_and_settle(page, opacity=0.0, threshold=0.0)
    assert plain.std() > 5, "the axial view shows no image"
    everywhere = overlay_mask(page, plain, opacity=1.0)  # threshold 0
    above_max = overlay_mask(page, plain, threshold=1.0)
    # The threshold is a fraction of the display window (D2: 0-1; expected error: 0 to its 99th percentile,
    # display.heatmap_window), so half of it keeps part of the default model's map over the brain.
    partial = overlay_mask(page, plain, threshold=0.5)
    assert everywhere.mean() > 0.2, "threshold 0: the heatmap overlay should cover the volume"
    # threshold 1 hides everything below the window's top; an expected-error map's top is its 99th percentile,
    # so its brightest 1 % of voxels stay (a D2 map's top is 1: nothing stays)
    assert above_max.sum() <= 0.05 * everywhere.sum(), "threshold 1: (almost) every heatmap value must be hidden"
    assert 0.01 < partial.sum() / everywhere.sum() < 0.99, "mid threshold: only part of the overlay stays"
    assert (partial & ~everywhere).sum() <= 0.01 * partial.sum(), "the overlay appears where it was not before"
    set_state(page, opacity=0.5, threshold=0.2)


def test_synthesize_small_volume_overlay_qa_and_save(server, browser, data):
    url, process = server
    page = open_page(browser, url)
    load(page, "source", data / "small_t1.nii.gz")
    load(page, "segmentation", data / "small_seg.nii.gz")
    status = synthesize(page)
    assert status.startswith("Done"), status
    assert len(page.query_selector_all("#views img.image-display-area")) == 3
    assert qa_rows(page) == ["foreground", "label 1", "label 2"]  # one row per label, plus the foreground
    assert_overlay_follows_threshold(page)

    page.click("#save")
    page.wait_for_selector("#saved", timeout=30_000)
    saved = [data / "small_t1_synthetic.nii.gz", data / "small_t1_expected_error.nii.gz"]
    assert all(p.is_file() for p in saved)
    stamps = [p.stat().st_mtime_ns for p in saved]
    page.click("#save")  # again: the page asks before overwriting, and "Keep" leaves the files alone
    page.click("#keep", timeout=10_000)
    assert [p.stat().st_mtime_ns for p in saved] == stamps
    assert sitk.ReadImage(str(saved[0])).GetSize() == (80, 80, 16)
    for p in saved:
        p.unlink()
    assert process.poll() is None
    page.context.close()


def test_bad_uploads_show_the_clis_error_and_the_server_keeps_running(server, browser, data):
    url, process = server
    page = open_page(browser, url)
    expected = {
        "notes.txt": "notes.txt could not be read as an image",  # named once, as the CLI does
        "slice.nii.gz": "slice.nii.gz: the input volume is a 2-D image; a 3-D volume is needed",
        "series4d.nii.gz": "series4d.nii.gz: the input volume is a 4-D image; a 3-D volume is needed",
    }
    for name, message in expected.items():
        page.set_input_files("#source-upload", str(data / "bad" / name))
        page.wait_for_function("(m) => (window.trame.state.get('error') || '').startsWith(m)", arg=message,
                               timeout=30_000)
        assert page.inner_text("#error").strip().startswith(message)
        page.set_input_files("#source-upload", [])
    assert process.poll() is None
    page.set_input_files("#source-upload", str(data / "small_t1.nii.gz"))  # the server still works
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('Loaded source')",
                           timeout=30_000)
    page.context.close()


def test_cancel_stops_the_run_and_leaves_no_output(server, browser, data):
    url, _process = server
    page = open_page(browser, url)
    load(page, "source", data / "big_t1.nii.gz")
    before = sorted(p.name for p in data.rglob("*"))
    page.click("#synthesize")
    page.wait_for_function("() => window.trame.state.get('running')", timeout=30_000)
    page.click("#cancel")
    status = wait_idle(page)
    assert status.startswith("Cancelled"), status
    assert state(page, "has_result") is False and qa_rows(page) in ([], ["No data available"])
    assert page.is_disabled("#save")
    assert sorted(p.name for p in data.rglob("*")) == before
    page.context.close()


def test_two_tabs_share_one_run_and_a_disconnect_mid_run_cancels_it(server, browser, data):
    url, process = server
    first, second = open_page(browser, url), open_page(browser, url)
    load(first, "source", data / "big_t1.nii.gz")
    before = sorted(p.name for p in data.rglob("*"))
    first.click("#synthesize")
    second.wait_for_function("() => window.trame.state.get('running')", timeout=30_000)
    # The viewer has one scene: while it runs, the other tab cannot start a second, competing run.
    assert second.is_disabled("#synthesize")
    second.context.close()
    assert first.inner_text("#status") != "" and state(first, "running")  # one tab leaving does not stop it
    first.context.close()  # the last client leaves mid-run: the run is cancelled
    third = open_page(browser, url)
    status = wait_idle(third)
    assert status.startswith("Cancelled"), status
    assert sorted(p.name for p in data.rglob("*")) == before  # no file, partial or not
    assert process.poll() is None
    third.context.close()


@pytest.mark.shared_data
def test_shared_glioma_synthesis_overlay_and_qa(server, browser):
    t1n = GLIOMA / "BraTS-GLI-00001-000-t1n.nii.gz"
    seg = GLIOMA / "BraTS-GLI-00001-000-seg.nii.gz"
    if not t1n.is_file() or not seg.is_file():
        pytest.skip(f"the shared glioma is not at {GLIOMA}")
    url, _process = server
    page = open_page(browser, url)
    load(page, "source", t1n)
    load(page, "segmentation", seg)
    status = synthesize(page)
    assert status.startswith("Done"), status
    labels = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(seg))))
    assert len(qa_rows(page)) == 1 + int((labels > 0).sum())  # foreground + one row per tumour label
    assert_overlay_follows_threshold(page)
    target = os.environ.get("DUALD_VIEW_SCREENSHOT")
    if target:
        settled_view(page)
        page.screenshot(path=target)
    page.context.close()
