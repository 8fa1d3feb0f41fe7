"""The dashboard in headless Chromium (Debian's chromium, driven by Playwright): DOM, plots and a screenshot
(copied to runs/dashboard.png)."""

from __future__ import annotations

import base64
import io
import shutil
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import ROOT, SHIPPED
from tests.service_helpers import ServiceProcess, setup_service

pytestmark = pytest.mark.service

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = ROOT / "runs" / "dashboard.png"  # kept for people to look at
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _summary(version: str, confidence: float) -> dict:
    hist = [0] * 10
    hist[min(9, int(confidence * 10))] = 50
    return {"key": uuid.uuid4().hex, "version": version, "start": time.time() - 60, "end": time.time(),
            "predictions": 50, "errors": 0, "labelled": 0, "correct": 0, "confidence_sum": 50 * confidence,
            "confidence_hist": hist, "prediction_hist": [50], "input_values": 0, "input_sum": [0.0],
            "input_sumsq": [0.0], "input_hist": None}


def _sample(i: int, prediction: int, label: int | None, version: str) -> dict:
    x = np.full((28, 28, 1), i % 256, np.uint8)
    return {"id": f"d{i}", "input": {"shape": [28, 28, 1], "dtype": "uint8", "data": base64.b64encode(x.tobytes()).decode()},
            "prediction": prediction, "confidence": 0.9, "label": label, "model_version": version, "timestamp": 1e9 + i}


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_dashboard_shows_versions_devices_and_accuracy(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    sessions, registry, key, _, tokens = setup_service(tmp_path / "svc", ("pi-kitchen", "phone-ana"))
    v1 = registry.publish(SHIPPED / "mnist-cnn-int8", "stable", key)
    v2 = registry.publish(SHIPPED / "mnist-cnn-float32", "canary", key)
    with ServiceProcess(tmp_path / "svc", admin_token="dashboard-admin-token") as svc:
        # 12 labelled samples from v1, 9 of them right (75.0%), 3 unlabelled; 4 from v2, all right
        samples = [_sample(i, i % 10, i % 10 if i < 9 else (i + 1) % 10, str(v1.version)) for i in range(12)]
        samples += [_sample(100 + i, 1, None, str(v1.version)) for i in range(3)]
        h = {"Authorization": f"Bearer {tokens['pi-kitchen']}", "Idempotency-Key": uuid.uuid4().hex}
        assert httpx.post(svc.url + "/v1/samples", json={"samples": samples}, headers=h).status_code == 200
        h = {"Authorization": f"Bearer {tokens['phone-ana']}", "Idempotency-Key": uuid.uuid4().hex}
        v2_samples = [_sample(200 + i, 2, 2, str(v2.version)) for i in range(4)]
        assert httpx.post(svc.url + "/v1/samples", json={"samples": v2_samples}, headers=h).status_code == 200
        # interval summaries (mean confidence 0.9 on v1, 0.6 on v2) and a rollout of v2 that is aborted
        for name, version, conf in (("pi-kitchen", v1.version, 0.9), ("phone-ana", v2.version, 0.6)):
            h = {"Authorization": f"Bearer {tokens[name]}"}
            assert httpx.post(svc.url + "/v1/summaries", json=_summary(str(version), conf), headers=h).status_code == 204
        r = httpx.post(svc.url + "/v1/admin/rollouts", headers=svc.admin,
                       json={"version": v2.version, "channel": "stable", "stages": "50,100", "hold": "1h"})
        assert r.status_code == 200, r.text
        assert httpx.post(svc.url + "/v1/admin/rollouts/stable/abort", headers=svc.admin).status_code == 200

        with sync_playwright() as p:
            # a fresh profile directory (Playwright's way of passing --user-data-dir)
            browser = p.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"), executable_path=CHROMIUM,
                                                           headless=True, args=FLAGS,
                                                           viewport={"width": 1280, "height": 800},
                                                           http_credentials={"username": "admin",
                                                                             "password": "dashboard-admin-token"})
            try:
                page = browser.new_page()
                requested: list[str] = []
                page.on("request", lambda req: requested.append(req.url))
                page.goto(svc.url + "/", wait_until="load", timeout=30_000)
                png = page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
                SCREENSHOT.parent.mkdir(exist_ok=True)
                shutil.copy(tmp_path / "dashboard.png", SCREENSHOT)
                charts = {c.get_attribute("data-chart"): c.bounding_box()
                          for c in page.locator("svg[data-chart]").all()}
                empty = [c.get_attribute("data-chart") for c in page.locator("svg[data-chart]:has(.no-data)").all()]
                confidence = page.locator("svg[data-chart=confidence] g[data-series]").all()
                series = sorted(g.get_attribute("data-series") for g in confidence)
                drift = sorted(g.get_attribute("data-series")
                               for g in page.locator("svg[data-chart=drift] g[data-series]").all())
                title = page.title()
                versions = page.locator("#versions tr[data-version]").all_inner_texts()
                devices = page.locator("#devices tr[data-device]").all_inner_texts()
                total = page.locator("#total-samples").inner_text()
            finally:
                browser.close()

    assert title == "edgeloop fleet"
    assert len(versions) == 2 and versions[0].startswith(f"v{v2.version}") and versions[1].startswith(f"v{v1.version}")
    assert "stable" in versions[1] and "75.0% (12 labelled)" in versions[1] and "96.7%" in versions[1]
    assert "canary" in versions[0] and "100.0% (4 labelled)" in versions[0]
    assert [d.split("\t")[0] for d in devices] == ["phone-ana", "pi-kitchen"]
    assert "15" in devices[1].split("\t") and total == "19"

    from PIL import Image

    image = Image.open(io.BytesIO(png))
    assert image.size[0] == 1280 and image.size[1] >= 800
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert pixels.std() > 10  # not a blank page
    # the title is drawn in its colour (#0b5394) near the top left, and the table headers in theirs (#dde7f3)
    def has(colour: tuple[int, int, int], region: np.ndarray) -> bool:
        return bool((np.abs(region - np.array(colour)).sum(-1) < 30).any())
    assert has((0x0B, 0x53, 0x94), pixels[:120, :600])
    assert has((0xDD, 0xE7, 0xF3), pixels)

    # the plots: drawn on the server (every request went to the service, none to a CDN), each with data
    assert requested and all(u.startswith(svc.url) for u in requested), requested
    assert set(charts) == {"rollouts", "drift", "confidence", "samples", "accuracy"}
    assert empty == []  # the shipped bundles carry a reference profile, so the summaries have a PSI
    assert series == [f"v{v1.version}", f"v{v2.version}"]
    assert drift == series

    def region(name: str) -> np.ndarray:
        b = charts[name]
        return pixels[int(b["y"]):int(b["y"] + b["height"]), int(b["x"]):int(b["x"] + b["width"])]
    for name in ("rollouts", "drift", "confidence", "samples", "accuracy"):
        assert has((0x0B, 0x53, 0x94), region(name)), name  # the first series' colour, or the bars'
    assert has((0xE6, 0x91, 0x38), region("confidence"))  # the second version's line
