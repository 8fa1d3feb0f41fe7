"""``python -m device …``: the device CLI on a machine with only the device extra."""

import sys

from device.cli import main

raise SystemExit(main(sys.argv[1:], prog="python -m device"))
