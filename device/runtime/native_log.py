"""Silence what native libraries print straight to file descriptors 1 and 2.

The TFLite converter prints SavedModel paths and MLIR logs; LiteRT prints an INFO line
when it applies XNNPACK. Python's ``sys.stdout`` redirection cannot catch either. It swaps
process-wide file descriptors, so only the CLIs and the cloud-side converter call it; the
device runtime, which may run beside other threads, never does.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_native_output(stdout: bool = True) -> Iterator[None]:
    """Send fd 2 (and fd 1 if ``stdout``) to a temporary file; replay its tail if the block raises."""
    fds = (1, 2) if stdout else (2,)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    with tempfile.TemporaryFile(mode="w+b") as log:
        for fd in fds:
            os.dup2(log.fileno(), fd)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            if failed:
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace")[-4000:])
