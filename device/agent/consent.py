"""The device owner's consent switch: a file ``AGENT_DIR/consent`` holding ``collect: off`` (or ``on``).

Read on every prediction, cheaply: the file is parsed again only when its modification time
changes, so switching collection off takes effect at the next prediction, with no restart.
No file means collection follows the agent's ``--collect`` policy.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

CONSENT_FILE = "consent"
_LINE = re.compile(r"^\s*collect\s*[:=]\s*(on|off|yes|no|true|false)\s*$", re.IGNORECASE | re.MULTILINE)


def parse_consent(text: str) -> bool:
    """True unless the text says ``collect: off`` (or no/false); the last such line wins."""
    found = _LINE.findall(text)
    return not found or found[-1].lower() in ("on", "yes", "true")


def write_consent(directory: Path | str, collect: bool) -> Path:
    """Set the switch (``edgeloop device consent on|off``); the agent directory is made if need be, so an
    owner can say no before the agent first runs."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / CONSENT_FILE
    tmp = path.with_name(f".{CONSENT_FILE}.tmp")
    tmp.write_text(f"collect: {'on' if collect else 'off'}\n")
    os.replace(tmp, path)
    return path


class ConsentSwitch:
    def __init__(self, directory: Path | str) -> None:
        self.path = Path(directory) / CONSENT_FILE
        self._stamp: tuple[int, int] | None = None
        self._allowed = True
        self._lock = threading.Lock()

    def collect_allowed(self) -> bool:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # an unreadable switch: the owner's intent is unknown, so collect nothing
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._allowed = parse_consent(self.path.read_text(errors="replace")[:4096])
                except OSError:
                    return False
                self._stamp = stamp
            return self._allowed
