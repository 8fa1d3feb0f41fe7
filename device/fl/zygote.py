"""A warm fork server ("zygote") for each round's ClientApp.

Flower 1.42's SuperExec starts a fresh ``flwr-clientapp`` process for every device in every round;
starting Python and importing Flower, numpy and LiteRT takes ~0.8 s, three at once on two cores
much longer. ``edgeloop device fl-client`` therefore starts, beside its SuperNode, one zygote that
has already imported everything the ClientApp needs and listens on a Unix socket in a private
(0700) temp dir. The ``flwr-clientapp`` on the SuperNode's PATH becomes a tiny stdlib-only client
(:data:`CLIENT_SCRIPT`): it sends its argv, cwd, environment and stdin/stdout/stderr (SCM_RIGHTS)
to the zygote, which forks a child that makes the lean launcher's ``run_clientapp`` call
(:func:`device.fl.clientapp.main`), and returns the child's exit status. The tiny client forwards
SIGTERM/SIGINT/SIGHUP to the child; if the tiny client goes away (killed), the zygote SIGKILLs the
child. If the zygote cannot be reached, the tiny client execs the lean launcher instead.

The zygote only imports before forking: it opens no gRPC channel or HTTP client and starts no
thread, so every child starts from a clean, single-threaded state.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

HEADER = struct.Struct("!I")
MAX_REQUEST = 1 << 22
TARGET = "device.fl.clientapp:main"
# What a ClientApp task imports: the launcher, the ClientApp (it loads the trainer)
PRELOAD = ("device.fl.clientapp", "device.fl.client", "device.fl.trainer")

# The `flwr-clientapp` script: stdlib only, started with -I -S (no site-packages, no PYTHON* env)
CLIENT_SCRIPT = r'''#!{python} -IS
import os, signal, socket, struct, sys
SOCK = {sock!r}
def fallback():
    os.execv({python!r}, [{python!r}, "-c", "import sys; from device.fl.clientapp import main; sys.exit(main())", *sys.argv[1:]])
try:
    import json
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(SOCK)
    body = json.dumps({{"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
    socket.send_fds(conn, [struct.pack("!I", len(body)) + body], [0, 1, 2])
except OSError:
    fallback()
def forward(signum, frame):
    try:
        conn.sendall(bytes([signum]))
    except OSError:
        pass
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, forward)
data = b""
while len(data) < 4:
    try:
        chunk = conn.recv(4 - len(data))
    except InterruptedError:
        continue
    if not chunk:
        sys.exit(1)
    data += chunk
sys.exit(struct.unpack("!i", data)[0])
'''


def write_client(path: str, sock_path: str, python: str | None = None) -> None:
    """Write the tiny ``flwr-clientapp`` that asks the zygote at ``sock_path`` for a ClientApp."""
    with open(path, "w") as fh:
        fh.write(CLIENT_SCRIPT.format(python=python or sys.executable, sock=sock_path))
    os.chmod(path, 0o755)


def _warm_up() -> None:
    """Import what a ClientApp needs; no channels, clients or threads."""
    import numpy  # noqa: F401

    try:  # never TensorFlow here: the trainer imports whichever backend it picks itself
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        pass
    from flwr.common.args import add_args_flwr_app_common  # noqa: F401
    from flwr.supercore.tls import validate_and_resolve_root_certificates  # noqa: F401
    from flwr.supernode.runtime.run_clientapp import run_clientapp  # noqa: F401

    for name in PRELOAD:  # by name: the zygote forks whatever ClientApp its caller runs, and imports none of it itself
        importlib.import_module(name)


def _recv_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
    if len(data) < HEADER.size:
        raise OSError("short request")
    (size,) = HEADER.unpack_from(data)
    body = data[HEADER.size:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise OSError("truncated request")
        body += chunk
    return json.loads(body), list(fds)


def _load_target(spec: str) -> Any:
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _child(request: dict[str, Any], fds: list[int], listener: socket.socket, conns: list[socket.socket],
           target: str) -> None:
    """In the forked child: become the ClientApp process the tiny client stands for. Never returns."""
    code = 1
    try:
        listener.close()
        for c in conns:
            c.close()
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for std, fd in zip((0, 1, 2), fds):
            os.dup2(fd, std)
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        code = _load_target(target)()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - report like an interpreter would, then exit
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def serve(sock_path: str, *, warm: bool = True, parent_pid: int | None = None, target: str = TARGET) -> int:
    """Listen on ``sock_path`` and fork a ClientApp per request until SIGTERM or the parent is gone.

    ``target`` (``module:function``): what each child runs with the request's argv, env and fds."""
    if warm:
        _warm_up()
    _load_target(target)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(sock_path)
    except FileNotFoundError:
        pass
    listener.bind(sock_path)
    os.chmod(sock_path, 0o600)
    listener.listen(16)
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children: dict[socket.socket, int] = {}  # connection -> child pid
    try:
        while not stopping:
            if parent_pid is not None and os.getppid() != parent_pid:
                break
            try:
                readable, _, _ = select.select([listener, *children], [], [], 0.02)
            except InterruptedError:
                continue
            for conn in readable:
                if conn is listener:
                    try:
                        client, _ = listener.accept()
                        client.settimeout(5)
                        request, fds = _recv_request(client)
                        client.settimeout(None)
                    except (OSError, ValueError):
                        continue
                    pid = os.fork()
                    if pid == 0:
                        _child(request, fds, listener, [client, *children], target)
                    for fd in fds:
                        os.close(fd)
                    children[client] = pid
                    continue
                pid = children[conn]
                try:
                    data = conn.recv(64)
                except OSError:
                    data = b""
                if data:  # signals forwarded by the tiny client
                    for signum in data:
                        _kill(pid, signum)
                else:  # the tiny client is gone: so is its ClientApp
                    _kill(pid, signal.SIGKILL)
            for conn, pid in list(children.items()):
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done, status = pid, 1 << 8
                if done:
                    code = os.waitstatus_to_exitcode(status)
                    try:
                        conn.sendall(struct.pack("!i", code if code >= 0 else 128 - code))
                    except OSError:
                        pass
                    conn.close()
                    del children[conn]
    finally:
        listener.close()
        try:
            os.unlink(sock_path)
        except OSError:
            pass
        for conn, pid in children.items():
            _kill(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            conn.close()
    return 0


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def noop() -> int:
    """A target that does nothing (the benchmark times a warm ClientApp start with it)."""
    return 0


def wait_ready(sock_path: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(sock_path):
            return True
        time.sleep(0.02)
    return False


if __name__ == "__main__":  # python -m device.fl.zygote SOCKET-PATH [--cold] [--target MODULE:FUNCTION]
    _args = sys.argv[2:]
    raise SystemExit(serve(sys.argv[1], warm="--cold" not in _args, parent_pid=os.getppid(),
                           target=_args[_args.index("--target") + 1] if "--target" in _args else TARGET))
