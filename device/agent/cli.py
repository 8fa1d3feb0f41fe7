"""``edgeloop device run``: the long-lived agent (registered into ``edgeloop device``'s parser)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from pathlib import Path


def cmd_run(args: argparse.Namespace) -> int:
    from device.agent.agent import Agent, AgentConfig
    from device.agent.collector import CollectionPolicy
    from device.runtime.native_log import quiet_native_output
    from device.runtime.resolve import resolve_bundle

    token = args.token or os.environ.get("EDGELOOP_DEVICE_TOKEN")
    if not token:
        raise ValueError("a device token is needed: --token or $EDGELOOP_DEVICE_TOKEN")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = AgentConfig(
        directory=Path(args.dir), server=args.server, token=token, channel=args.channel,
        public_key=Path(args.public_key) if args.public_key else None,
        initial_bundle=resolve_bundle(args.initial) if args.initial else None,
        poll_interval=args.poll_interval, upload_interval=args.upload_interval, max_backoff=args.max_backoff,
        batch_size=args.batch_size, queue_max=args.queue_max, timeout=args.timeout,
        download_timeout=args.download_timeout,
        policy=CollectionPolicy(args.collect, args.rate, args.threshold), num_threads=args.threads,
    )
    with quiet_native_output(stdout=False):
        agent = Agent(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def cycle(outcome: str, sent: int) -> None:
        if outcome not in ("idle", "unchanged") or sent:
            print(json.dumps({"outcome": outcome, "sent": sent, "version": agent.version, **agent.queue.counters()}),
                  flush=True)

    print(json.dumps({"agent": str(config.directory), "version": agent.version, "channel": config.channel}), flush=True)
    try:
        agent.run(stop, duration=args.duration, on_cycle=cycle)
    finally:
        agent.close()
    return 0


def cmd_consent(args: argparse.Namespace) -> int:
    from device.agent.consent import write_consent

    path = write_consent(Path(args.dir), args.switch == "on")
    print(json.dumps({"collect": args.switch, "file": str(path)}) if args.json else
          f"collection {args.switch} for {args.dir} ({path}); a running agent follows at its next prediction")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("consent", help="the owner's switch: 'consent off' stops sample collection at once "
                                       "(writes AGENT_DIR/consent)")
    p.add_argument("switch", choices=("on", "off"))
    p.add_argument("--dir", default="agent", help="agent directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_consent)

    p = sub.add_parser("run", help="run the agent: poll for signed model updates, upload collected samples")
    p.add_argument("--server", required=True, help="service URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--token", default=None, help="device token (or $EDGELOOP_DEVICE_TOKEN)")
    p.add_argument("--channel", default="stable")
    p.add_argument("--dir", default="agent", help="agent directory: bundles, current model, sample queue")
    p.add_argument("--public-key", default=None, help="the cloud's signing.pub; updates are refused without it")
    p.add_argument("--initial", default=None, help="bundle to serve before the first update (e.g. mnist-cnn-int8)")
    p.add_argument("--poll-interval", type=float, default=30.0)
    p.add_argument("--upload-interval", type=float, default=10.0)
    p.add_argument("--max-backoff", type=float, default=300.0)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds for one request to answer")
    p.add_argument("--download-timeout", type=float, default=120.0,
                   help="seconds for one bundle file to arrive whole (a slow drip is cut off and retried)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--queue-max", type=int, default=10_000)
    p.add_argument("--collect", default="low-confidence", choices=("all", "random", "low-confidence", "none"),
                   help="collection policy; 'edgeloop device consent off' overrides it at once")
    p.add_argument("--rate", type=float, default=0.1, help="fraction kept by --collect random")
    p.add_argument("--threshold", type=float, default=0.8, help="confidence below which --collect low-confidence keeps")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run until killed)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_run)
