"""A real ``edgeloop cloud serve`` process on 127.0.0.1 for integration tests, stopped by its PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from device.fl.loopback import free_port
from tests.conftest import ROOT


class ServiceProcess:
    """``with ServiceProcess(data_dir) as svc: svc.url`` — start, wait until healthy, always stop."""

    def __init__(self, data_dir: Path, port: int | None = None, extra: tuple[str, ...] = (),
                 admin_token: str | None = None) -> None:
        self.data_dir, self.port, self.extra = Path(data_dir), port or free_port(), extra
        self.admin_token = admin_token
        if admin_token is not None:  # the dashboard, /v1/versions and /docs need it
            (self.data_dir / "admin.token").write_text(admin_token + "\n")
            self.extra = (*extra, "--admin-token-file", str(self.data_dir / "admin.token"))
        self.proc: subprocess.Popen | None = None

    @property
    def admin(self) -> dict[str, str]:
        """The admin's Authorization header."""
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        with open(self.data_dir / f"serve-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgeloop", "cloud", "serve", "--data-dir", str(self.data_dir),
                 "--host", "127.0.0.1", "--port", str(self.port), "--release-cache", "0", *self.extra],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline, seen = time.monotonic() + timeout, set()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: "
                                   + (self.data_dir / f"serve-{self.port}.log").read_text()[-2000:])
            try:  # a new connection each time, so that any worker may take it
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        seen.add(resp.headers.get("x-edgeloop-worker"))
                        if len(seen) >= self.workers:
                            return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server on {self.url} did not become healthy in {timeout} s"
                           f" ({len(seen)} of {self.workers} workers answered)")

    @property
    def workers(self) -> int:
        """How many worker processes ``--workers`` asked for: with several, a test that spreads requests over
        them must not start while one is still importing (it would then see only the other one)."""
        args = list(self.extra)
        return int(args[args.index("--workers") + 1]) if "--workers" in args else 1

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        self.proc = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash or a power cut would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def setup_service(data_dir: Path, devices: tuple[str, ...] = ("dev1",), database_url: str | None = None):
    """A data dir with a signing key and registered devices; returns (sessions, registry, key, pub_path, tokens).

    The store is SQLite in the data dir unless ``database_url`` names another (a test's PostgreSQL).
    """
    from cloud.release.signing import keygen, load_private_key
    from cloud.service.auth import add_device
    from cloud.service.db import database_url as resolve_url
    from cloud.service.db import make_engine, make_sessionmaker
    from cloud.service.registry import Registry

    private, public = keygen(data_dir / "keys")
    url = database_url or "sqlite:///" + str(data_dir / "edgeloop.sqlite")
    sessions = make_sessionmaker(make_engine(resolve_url(data_dir, url)))
    registry = Registry(sessions, data_dir)
    tokens = {name: add_device(sessions, name) for name in devices}
    return sessions, registry, load_private_key(private), public, tokens


def screenshot(url: str, path: Path, admin_token: str, profile_dir: Path) -> bool:
    """A full-page screenshot of ``url`` in Debian's headless Chromium (Playwright); False if it is not installed."""
    import shutil

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        return False
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(profile_dir), executable_path=chromium, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
            viewport={"width": 1280, "height": 800}, http_credentials={"username": "admin", "password": admin_token})
        try:
            page = browser.new_page()
            page.goto(url, wait_until="load", timeout=30_000)
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path), full_page=True)
        finally:
            browser.close()
    return True


def postgres_cluster_or_skip():
    """The load benchmark's throw-away PostgreSQL cluster (initdb + postgres on a free 127.0.0.1 port)."""
    import importlib.util

    import pytest

    spec = importlib.util.spec_from_file_location("fleet_load", ROOT / "benchmarks" / "fleet_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    if not module.pg_bin("initdb") or not module.pg_bin("postgres"):
        pytest.skip("PostgreSQL server binaries (initdb, postgres) are not installed")
    return module.postgres_cluster()
