"""Fleet load: N simulated devices (async aiohttp clients) poll for updates and upload samples on loopback
against a real ``edgeloop cloud serve`` (1 or more worker processes), on SQLite and on PostgreSQL.

Each device loops: GET its channel's release with If-None-Match (a 304 after the first); a share of the
devices (``--upload-share``) also POSTs a batch of samples under an idempotency key (resent with the same
key until acknowledged) and an interval summary, after each poll or, with ``--upload-every``, on a
schedule of their own; think, repeat. At the deadline every device flushes its pending batch, so
samples sent = samples acknowledged, and the script checks that the database stores exactly that
many, with no duplicate ids. A backend is ``NAME:WORKERS``.

    .venv/bin/python benchmarks/fleet_load.py                  # 200 devices, 60 s, sqlite:1 + postgresql:1
    .venv/bin/python benchmarks/fleet_load.py --devices 1000 --upload-share 0.1 \
        --backends sqlite:1,postgresql:1,postgresql:2        # the fleet at scale: mostly 304 polls
    .venv/bin/python benchmarks/fleet_load.py --devices 1000 --upload-share 0.1 --think 0.1 --upload-every 4 \
        --backends postgresql:1,postgresql:2                 # 1 worker against 2 with the same upload work
    ... --worker-cpu 0.5                                     # each worker capped at half a core (root, cgroups)
    .venv/bin/python benchmarks/fleet_load.py --duration 10 --backends sqlite
    .venv/bin/python benchmarks/fleet_load.py --devices 1000 --upload-share 0.1 --baseline 13f8992 \
        --backends sqlite:1:nofast,sqlite:1                  # against an older commit's server, side by side

A backend ``NAME:WORKERS:nofast`` runs ``serve --no-fast-poll`` (every poll through FastAPI).
``--baseline REF`` first runs the same fleet against the server of git commit REF (SQLite, one
worker), exported with ``git archive`` to a temporary directory and set up by its own code.

PostgreSQL: the script runs initdb and postgres (from /usr/local/bin or /usr/lib/postgresql/*/bin) as
user ``nobody`` in a temporary directory on a free 127.0.0.1 port, and stops it by PID.
Prints a table and writes ``benchmarks/results/fleet_load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import glob
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "fleet_load.json"

from benchmarks.cpu_cap import capped, cpu_hierarchy, quota_us, worker_pids  # noqa: E402
from device.fl.loopback import free_port  # noqa: E402


def pg_bin(name: str) -> str | None:
    for candidate in [f"/usr/local/bin/{name}", *sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[::-1]]:
        if os.path.exists(candidate):
            return candidate
    return shutil.which(name)


@contextmanager
def postgres_cluster():
    """A throw-away PostgreSQL cluster on 127.0.0.1; yields its URL. Runs as ``nobody`` when we are root."""
    import psycopg

    initdb, postgres = pg_bin("initdb"), pg_bin("postgres")
    if not initdb or not postgres:
        raise RuntimeError("PostgreSQL server binaries (initdb, postgres) not found")
    root = Path(tempfile.mkdtemp(prefix="edgeloop-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(root, "nobody", "nogroup")
        as_user = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    data = root / "data"
    port = free_port()
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, cwd=root)
    log = open(root / "postgres.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([*as_user, postgres, "-D", str(data), "-p", str(port), "-k", str(root),
                             "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
                    c.execute("CREATE DATABASE edgeloop")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("postgres did not start: " + (root / "postgres.log").read_text()[-1500:]) from None
                time.sleep(0.2)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/edgeloop", {"pid": proc.pid, "port": port}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # fast shutdown
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"poll": [], "upload": [], "summary": []})
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    generated: int = 0
    acknowledged: int = 0
    ids: list[str] = field(default_factory=list)
    late: int = 0  # paced uploads that were due while the device's previous one was still out
    since: float = 0.0  # time.monotonic() from which latencies and statuses count (after the warm-up)

    def record(self, kind: str, seconds: float, status: int) -> None:
        if time.monotonic() >= self.since:
            self.latencies[kind].append(seconds)
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1


def make_batch(device: int, seq: int, size: int, data: str) -> list[dict]:
    return [{"id": f"d{device}-{seq}-{i}", "input": {"shape": [28, 28, 1], "dtype": "uint8", "data": data},
             "prediction": i % 10, "confidence": 0.42, "label": (i + device) % 10, "model_version": "1",
             "timestamp": time.time()} for i in range(size)]


def make_summary(version: str = "1") -> dict:
    """An interval summary as an agent sends it (:mod:`device.agent.summary`): 50 predictions of a 28×28 input."""
    now = time.time()
    return {"key": uuid.uuid4().hex, "version": version, "start": now - 60, "end": now, "predictions": 50, "errors": 0,
            "labelled": 5, "correct": 4, "confidence_sum": 45.0, "confidence_hist": [0] * 8 + [10, 40],
            "prediction_hist": [5] * 10, "input_values": 50 * 784, "input_sum": [50 * 784 * 33.0],
            "input_sumsq": [50 * 784 * 6000.0], "input_hist": [[30000] + [600] * 14 + [200]]}


class RawPoller:
    """One device's keep-alive connection for its polls, speaking just enough HTTP/1.1 by hand.

    aiohttp costs the load generator about as much CPU per request as the server spends on a 304,
    so on a 2-core machine it, not the server, would set the pace. This costs a fraction of that,
    and reconnects whenever the server closes the connection (keep-alive timeout, errors).
    """

    def __init__(self, host: str, port: int, path: str, token: str) -> None:
        self.host, self.port = host, port
        self.head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, etag: str | None) -> tuple[int, str | None]:
        for attempt in range(2):  # a kept-alive connection the server has just closed: reconnect once
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                request = self.head + (f"If-None-Match: {etag}\r\n" if etag else "") + "\r\n"
                self.writer.write(request.encode("latin-1"))
                head = await self.reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ", 2)[1])
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                length = int(headers.get("content-length", "0"))
                if length:
                    await self.reader.readexactly(length)
                if headers.get("connection", "").lower() == "close":
                    self.close()
                return status, headers.get("etag")
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


FLUSH_TRIES = 10  # a batch still unacknowledged after this many resends at the deadline counts as lost


async def device_loop(client, url: str, idx: int, token: str, stats: Stats, deadline: float, think: float,
                      batch: int, data: str, rng: np.random.Generator, uploads: bool = True,
                      upload_every: float = 0.0) -> None:
    """One device. It polls, thinks and polls again; an uploading device also sends a batch of samples
    and an interval summary: in the same loop after each poll (``upload_every`` 0), or on its own
    schedule every ``upload_every`` seconds, as an agent's upload interval does."""
    import aiohttp

    errors = (aiohttp.ClientError, asyncio.TimeoutError, OSError, asyncio.IncompleteReadError, ValueError)
    auth = {"Authorization": f"Bearer {token}"}
    host, _, port = url.removeprefix("http://").partition(":")
    poller = RawPoller(host, int(port), "/v1/channels/stable/current", token)
    etag, seq, pending = None, 0, None

    async def poll() -> None:
        nonlocal etag
        t0 = time.perf_counter()
        try:
            status, got = await asyncio.wait_for(poller.get(etag), 60)
            stats.record("poll", time.perf_counter() - t0, status)
            if status == 200:
                etag = got
        except errors:
            poller.close()
            stats.errors += 1

    async def upload(flushing: bool) -> None:
        """Send the pending batch (resent under its key until acknowledged), then a summary unless flushing."""
        nonlocal seq, pending
        if pending is None:
            pending = (uuid.uuid4().hex, make_batch(idx, seq, batch, data))
            seq += 1
            stats.generated += batch
        t0 = time.perf_counter()
        try:
            async with client.post(f"{url}/v1/samples", json={"samples": pending[1]},
                                   headers={**auth, "Idempotency-Key": pending[0]}) as r:
                await r.read()
            stats.record("upload", time.perf_counter() - t0, r.status)
            if r.status == 200:
                stats.acknowledged += len(pending[1])
                stats.ids += [s["id"] for s in pending[1]]
                pending = None
        except errors:
            stats.errors += 1
        if not flushing:
            t0 = time.perf_counter()
            try:
                async with client.post(f"{url}/v1/summaries", json=make_summary(), headers=auth) as r:
                    await r.read()
                stats.record("summary", time.perf_counter() - t0, r.status)
            except errors:
                stats.errors += 1

    async def paced_uploads() -> None:
        """Every ``upload_every`` seconds from a random phase; an upload that is due while the last is still
        out goes as soon as it is back, and counts as late (the server did not keep the schedule)."""
        due = time.monotonic() + float(rng.uniform(0, upload_every))
        while due < deadline:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await upload(flushing=False)
            due += upload_every
            if time.monotonic() > due and time.monotonic() >= stats.since:
                stats.late += 1
        for _ in range(FLUSH_TRIES):  # at the deadline: resend until the batch is acknowledged
            if pending is None:
                break
            await upload(flushing=True)

    await asyncio.sleep(float(rng.uniform(0, think)))  # devices do not start in lockstep
    uploader = asyncio.ensure_future(paced_uploads()) if uploads and upload_every > 0 else None
    closed_loop = uploads and uploader is None
    flushes = 0
    try:
        while True:
            flushing = time.monotonic() >= deadline
            flushes += flushing
            if flushing and (pending is None or not closed_loop or flushes > FLUSH_TRIES):
                return
            if not flushing:
                await poll()
            if closed_loop:
                await upload(flushing)
            if not flushing:
                await asyncio.sleep(think * float(rng.uniform(0.5, 1.5)))
    finally:
        poller.close()
        if uploader is not None:
            await uploader


async def fleet(url: str, tokens: list[str], duration: float, think: float, batch: int,
                upload_share: float = 1.0, warmup: float = 0.0, upload_every: float = 0.0) -> tuple[Stats, float]:
    """Run the fleet for ``warmup + duration`` seconds; latencies and rates count only after the warm-up
    (every device's first poll is a 200 with the release, the server's caches fill); returns the
    stats and the seconds they cover."""
    import aiohttp

    stats = Stats()
    data = base64.b64encode(np.random.default_rng(0).integers(0, 256, 784, dtype=np.uint8).tobytes()).decode()
    connector = aiohttp.TCPConnector(limit=len(tokens))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        start = time.monotonic()
        stats.since = start + warmup
        uploaders = max(1, round(upload_share * len(tokens)))
        await asyncio.gather(*(device_loop(client, url, i, t, stats, start + warmup + duration, think, batch, data,
                                           np.random.default_rng(i), uploads=i < uploaders, upload_every=upload_every)
                               for i, t in enumerate(tokens)))
        elapsed = time.monotonic() - start - warmup
    return stats, elapsed


# The data directory of an older commit's server is made by that commit's own code.
OLD_SETUP = """
import json, sys
from pathlib import Path
try:
    from cloud.release.signing import keygen, load_private_key
except ImportError:
    from cloud.signing import keygen, load_private_key
from cloud.service.auth import add_device
from cloud.service.db import database_url, make_engine, make_sessionmaker
from cloud.service.registry import Registry
data, n = Path(sys.argv[1]), int(sys.argv[2])
sessions = make_sessionmaker(make_engine(database_url(data)))
private, _ = keygen(data / "keys")
Registry(sessions, data).publish("models/bundles/mnist-cnn-int8", "stable", load_private_key(private))
print(json.dumps([add_device(sessions, f"sim-{i:03d}") for i in range(n)]))
"""


@contextmanager
def exported_tree(ref: str):
    """Commit ``ref`` of this repository as plain files in a temporary directory (``git archive``)."""
    root = Path(tempfile.mkdtemp(prefix="edgeloop-baseline-"))
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def new_loop():
    """uvloop's event loop where installed (it comes with uvicorn[standard]), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and all their descendants, as of now."""
    import psutil

    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs.update((p.pid, p) for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            continue
    total = 0.0
    for proc in procs.values():
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:  # ended since it was listed
            pass
    return total


def run_backend(name: str, db_url: str | None, args: argparse.Namespace, workers: int = 1,
                tree: Path | None = None, label: str = "", fast_poll: bool = True, shared_limits: bool = False,
                db_pid: int | None = None) -> dict:
    """One fleet run. ``tree``: another checkout's server (SQLite, one worker), set up by its own code.

    Besides rates and latencies it records the CPU seconds that the server (all workers), the database
    (``db_pid``'s processes) and this load generator spent in the measured window: on two shared cores
    the rates are bounded by the sum, and the server's CPU per request is its cost alone.
    """
    import psutil
    from sqlalchemy import func, select

    from cloud.release.signing import keygen, load_private_key
    from cloud.service.auth import add_device
    from cloud.service.db import Sample, database_url, make_engine, make_sessionmaker
    from cloud.service.registry import Registry

    data = Path(tempfile.mkdtemp(prefix=f"edgeloop-load-{name}-"))
    try:
        url = database_url(data, db_url)
        serve = [sys.executable, "-m", "edgeloop", "cloud", "serve", "--data-dir", str(data), "--rate", "1000",
                 "--burst", "1000"]
        env = {**os.environ, "DATABASE_URL": url}
        if tree is None:
            engine = make_engine(url)
            sessions = make_sessionmaker(engine)
            private, _ = keygen(data / "keys")
            Registry(sessions, data).publish(ROOT / "models/bundles/mnist-cnn-int8", "stable", load_private_key(private))
            tokens = [add_device(sessions, f"sim-{i:03d}") for i in range(args.devices)]
            serve += ["--workers", str(workers), "--max-concurrency", str(max(512, 2 * args.devices)),
                      *([] if fast_poll else ["--no-fast-poll"]),
                      *(["--shared-limits"] if shared_limits else [])]
        else:
            env["PYTHONPATH"] = str(tree)
            made = subprocess.run([sys.executable, "-c", OLD_SETUP, str(data), str(args.devices)], cwd=tree, env=env,
                                  check=True, capture_output=True, text=True)
            tokens = json.loads(made.stdout.strip().splitlines()[-1])
        port = free_port()
        server_log = open(data / "server.log", "wb")  # noqa: SIM115 - closed below; a pipe nobody reads would fill up
        server = subprocess.Popen([*serve, "--port", str(port)], cwd=tree or ROOT, env=env,
                                  stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
        peak = [0]
        done = threading.Event()
        caps = ExitStack()  # --worker-cpu's groups: removed after the server has stopped
        try:
            import urllib.request

            for _ in range(300):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.1)
            proc = psutil.Process(server.pid)
            if args.worker_cpu:
                caps.enter_context(capped(worker_pids(server.pid, workers), args.worker_cpu))

            def watch() -> None:
                while not done.is_set():
                    try:
                        rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
                        peak[0] = max(peak[0], rss)
                    except psutil.Error:
                        pass
                    done.wait(0.2)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            capped_text = f", each capped at {args.worker_cpu:g} core" if args.worker_cpu else ""
            print(f"[{name}{label}, {workers} worker(s){capped_text}] {args.devices} devices ({args.upload_share:.0%} uploading) for "
                  f"{args.duration:.0f} s against 127.0.0.1:{port} (load average {os.getloadavg()[0]:.1f}) …", flush=True)
            cpu: dict[str, list[float]] = {"server": [], "database": [], "generator": []}

            def read_cpu() -> None:
                cpu["server"].append(cpu_seconds([server.pid]))
                cpu["database"].append(cpu_seconds([db_pid] if db_pid else []))
                cpu["generator"].append(sum(os.times()[:2]))

            at_warmup = threading.Timer(args.warmup, read_cpu)  # the measured window starts after the warm-up
            at_warmup.start()
            with asyncio.Runner(loop_factory=new_loop()) as runner:
                stats, elapsed = runner.run(fleet(f"http://127.0.0.1:{port}", tokens, args.duration, args.think,
                                                  args.batch, args.upload_share, args.warmup, args.upload_every))
            at_warmup.join()
            read_cpu()
        finally:
            done.set()
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait(10)
            caps.close()
        server_log.close()
        logged = (data / "server.log").read_text(errors="replace").splitlines()
        if args.upload_every:
            due = len(stats.latencies["upload"])
            print(f"  uploads every {args.upload_every:g} s: {stats.late} of {due} went late (the server fell behind "
                  "the schedule)" if stats.late else f"  uploads every {args.upload_every:g} s: all {due} on time",
                  flush=True)
        if logged:
            print(f"  the server logged {len(logged)} line(s); the last: {logged[-1][:200]}", flush=True)
        if tree is not None:  # read the old server's store (with this code: it only adds tables, afterwards)
            engine = make_engine(url)
            sessions = make_sessionmaker(engine)
        with sessions() as s:
            stored = int(s.scalar(select(func.count()).select_from(Sample)))
            distinct = int(s.scalar(select(func.count(func.distinct(Sample.sample_id)))))
        engine.dispose()
        lat = {k: np.asarray(v) * 1000 for k, v in stats.latencies.items()}
        everything = np.concatenate(list(lat.values()))
        requests = int(sum(stats.statuses.values()))

        def pct(k: str, q: float) -> float | None:
            return float(np.percentile(lat[k], q)) if len(lat[k]) else None

        return {
            "backend": name + label, "workers": workers, "devices": args.devices, "upload_share": args.upload_share,
            "worker_cpu_cap": args.worker_cpu or None, "upload_every_s": args.upload_every or None,
            "uploads_late": stats.late if args.upload_every else None,
            "duration_s": round(elapsed, 1), "requests": requests,
            "req_per_s": requests / elapsed, "poll_req_per_s": len(lat["poll"]) / elapsed,
            "errors": stats.errors, "statuses": stats.statuses,
            "p50_ms": float(np.percentile(everything, 50)), "p99_ms": float(np.percentile(everything, 99)),
            "poll_p50_ms": pct("poll", 50), "poll_p99_ms": pct("poll", 99),
            "upload_p50_ms": pct("upload", 50), "upload_p99_ms": pct("upload", 99),
            "summary_p50_ms": pct("summary", 50), "summary_p99_ms": pct("summary", 99),
            "samples_sent": stats.generated, "samples_acknowledged": stats.acknowledged, "samples_stored": stored,
            "distinct_ids_stored": distinct, "duplicate_acks": len(stats.ids) - len(set(stats.ids)),
            "exactly_once": stats.generated == stats.acknowledged == stored == distinct,
            "server_peak_rss_mib": peak[0] / 2**20,
            # CPU in the measured window, ms per request; the generator's share is this process (all its threads)
            **{f"{k}_cpu_ms_per_req": 1000 * (v[-1] - v[0]) / max(1, requests) for k, v in cpu.items() if len(v) == 2},
            "server_cpu_share": (cpu["server"][-1] - cpu["server"][0]) / elapsed / (os.cpu_count() or 1),
            "load_average_1min_after": os.getloadavg()[0],  # this machine is shared: context for the figures
        }
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--think", type=float, default=1.0, help="mean seconds a device waits between cycles")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds before latencies and rates count (each device's first poll is a 200)")
    parser.add_argument("--batch", type=int, default=10, help="samples per upload")
    parser.add_argument("--upload-share", type=float, default=1.0,
                        help="fraction of devices that upload samples and summaries (the rest only poll)")
    parser.add_argument("--backends", default="sqlite:1,postgresql:1",
                        help="NAME:WORKERS[:nofast|:shared], comma-separated (nofast: serve --no-fast-poll; shared: "
                             "--shared-limits, which --workers 2 and more imply)")
    parser.add_argument("--baseline", default=None, metavar="REF",
                        help="first run the fleet against git commit REF's server (SQLite, 1 worker)")
    parser.add_argument("--upload-every", type=float, default=0.0, metavar="SECONDS",
                        help="an uploading device sends its batch and summary on this schedule, as an agent's upload "
                             "interval does, so every backend that keeps it gets the same upload work; 0 (default): "
                             "after each poll, as fast as the server answers (a faster server then gets more uploads)")
    parser.add_argument("--worker-cpu", type=float, default=0.0, metavar="CORES",
                        help="cap each server worker process at this many cores (a cgroup each; Linux, root), so "
                             "that a second worker gets a core's share of its own on a machine it shares with the "
                             "load generator and PostgreSQL; 0 (default): uncapped")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.upload_every < 0:
        parser.error(f"--upload-every must be >= 0 seconds, got {args.upload_every}")
    if args.worker_cpu:
        try:
            quota_us(args.worker_cpu)
            cpu_hierarchy()
        except (ValueError, RuntimeError) as exc:
            parser.error(str(exc))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    try:  # a thousand devices hold a thousand sockets: lift the soft limit on open files to the hard one
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    rows = []
    if args.baseline:
        with exported_tree(args.baseline) as tree:
            rows.append(run_backend("sqlite", None, args, 1, tree=tree, label=f" @{args.baseline}"))
    for spec in args.backends.split(","):
        backend, _, rest = spec.partition(":")
        workers_text, _, variant = rest.partition(":")
        workers = int(workers_text or 1)
        if variant not in ("", "nofast", "shared"):
            parser.error(f"--backends: unknown variant {variant!r} in {spec!r} (NAME:WORKERS[:nofast|:shared])")
        fast, label, shared = variant != "nofast", f" {variant}" if variant else "", variant == "shared"
        if backend == "sqlite":
            rows.append(run_backend("sqlite", None, args, workers, label=label, fast_poll=fast, shared_limits=shared))
        elif backend == "postgresql":
            try:
                with postgres_cluster() as (url, info):
                    rows.append(run_backend("postgresql", url, args, workers, label=label, fast_poll=fast,
                                            shared_limits=shared, db_pid=info["pid"]))
            except (RuntimeError, subprocess.CalledProcessError, FileNotFoundError) as exc:
                print(f"[postgresql] skipped: {exc}")
                rows.append({"backend": "postgresql", "workers": workers, "skipped": str(exc)})
        else:
            parser.error(f"unknown backend {backend!r}")

    header = ("backend", "workers", "req/s", "poll req/s", "p50 ms", "p99 ms", "poll p50/p99", "upload p50/p99",
              "sent", "stored", "errors", "peak RSS", "CPU ms/req server / db / generator")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        if "skipped" in r:
            print(f"| {r['backend']} | skipped: {r['skipped']} |")
            continue
        print(f"| {r['backend']} | {r['workers']} | {r['req_per_s']:.0f} | {r['poll_req_per_s']:.0f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['poll_p50_ms']:.1f} / {r['poll_p99_ms']:.1f} | "
              f"{r['upload_p50_ms'] or 0:.1f} / {r['upload_p99_ms'] or 0:.1f} | "
              f"{r['samples_sent']} | {r['samples_stored']} | {r['errors']} | {r['server_peak_rss_mib']:.0f} MiB | "
              f"{r['server_cpu_ms_per_req']:.2f} / {r['database_cpu_ms_per_req']:.2f} / "
              f"{r['generator_cpu_ms_per_req']:.2f} |")
    print("(latencies include time queued in the client and server when the machine is saturated; CPU ms/req: CPU time"
          " in the measured window over requests answered, for the server's processes, PostgreSQL's, and this load"
          " generator's)")
    done = [r for r in rows if "skipped" not in r]
    for a, b in zip(done, done[1:]):
        print(f"{b['backend']}:{b['workers']} / {a['backend']}:{a['workers']}: req/s ×{b['req_per_s'] / a['req_per_s']:.2f}, "
              f"poll req/s ×{b['poll_req_per_s'] / a['poll_req_per_s']:.2f}, p99 ×{b['p99_ms'] / a['p99_ms']:.2f}, "
              f"samples stored ×{b['samples_stored'] / max(1, a['samples_stored']):.2f}, "
              f"server CPU per request ×{b['server_cpu_ms_per_req'] / a['server_cpu_ms_per_req']:.2f}, "
              f"peak RSS ×{b['server_peak_rss_mib'] / a['server_peak_rss_mib']:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                                 "platform": platform.platform()},
                               "results": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")
    ok = all(r.get("exactly_once", True) for r in rows)
    if not ok:
        print("FAILED: samples sent and stored differ")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
