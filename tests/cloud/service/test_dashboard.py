"""The dashboard in headless Chromium (Debian's chromium, driven by Playwright): DOM and a screenshot."""

from __future__ import annotations

import base64
import io
import shutil
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import SHIPPED
from tests.service_helpers import ServiceProcess, setup_service

pytestmark = pytest.mark.service

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


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

        with sync_playwright() as p:
            # a fresh profile directory (Playwright's way of passing --user-data-dir)
            browser = p.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"), executable_path=CHROMIUM,
                                                           headless=True, args=FLAGS,
                                                           viewport={"width": 1280, "height": 800},
                                                           http_credentials={"username": "admin",
                                                                             "password": "dashboard-admin-token"})
            try:
                page = browser.new_page()
                page.goto(svc.url + "/", wait_until="load", timeout=30_000)
                png = page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=False)
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
    assert image.size == (1280, 800)
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert pixels.std() > 10  # not a blank page
    # the title is drawn in its colour (#0b5394) near the top left, and the table headers in theirs (#dde7f3)
    def has(colour: tuple[int, int, int], region: np.ndarray) -> bool:
        return bool((np.abs(region - np.array(colour)).sum(-1) < 30).any())
    assert has((0x0B, 0x53, 0x94), pixels[:120, :600])
    assert has((0xDD, 0xE7, 0xF3), pixels)
