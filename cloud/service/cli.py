"""``edgeloop cloud serve|keygen|add-device|revoke-device|publish|versions|promote|rollback|retrain``, and
(from :mod:`cloud.service.fleet_cli`) ``rollout|drift|forget-device``.

Registered into ``edgeloop cloud``'s parser by :func:`register`; each command imports
what it needs when it runs (only ``retrain`` loads TensorFlow). The commands that change the
registry or the fleet also act on a remote server through its admin API
(``--server URL --admin-token-file F``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from cloud.service.fleet_cli import register as register_fleet
from cloud.service.fleet_cli import remote, remote_args
from cloud.service.store import open_registry

DEFAULT_DATA = "service-data"
SERVE_ARGS_ENV = "EDGELOOP_SERVE_ARGS"  # serve's parsed options, for each worker process to build its app


def _key_path(args: argparse.Namespace) -> Path:
    return Path(args.key) if getattr(args, "key", None) else Path(args.data_dir) / "keys" / "signing.key"


def service_config(args: argparse.Namespace) -> Any:
    """The :class:`ServiceConfig` that ``serve``'s options describe (each worker builds the same one)."""
    from cloud.service.app import ServiceConfig
    from cloud.service.auth import RateLimit, read_admin_token
    from cloud.service.ticker import TickerConfig

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    auto = None
    if args.auto_retrain:
        from cloud.service.auto_retrain import AutoRetrainConfig

        auto = AutoRetrainConfig(channel=args.retrain_channel, max_drift=args.max_drift)
    admin = read_admin_token(args.admin_token_file) if args.admin_token_file else None
    return ServiceConfig(Path(args.data_dir), args.database_url, args.max_request_bytes, args.max_batch,
                         args.device_quota, RateLimit(args.rate, args.burst), args.release_cache, admin_token=admin,
                         shared_limits=args.workers > 1 or args.shared_limits,
                         ticker=TickerConfig(args.rollout_tick, args.retention_days), auto_retrain=auto,
                         signing_key_path=Path(args.key) if args.key else None, worker_header=args.workers > 1,
                         fast_poll=not getattr(args, "no_fast_poll", False))


def app_from_env() -> Any:
    """uvicorn's app factory in each worker of ``serve --workers N``: the app from the options in the environment."""
    from cloud.service.app import create_app

    options = {k: v for k, v in json.loads(os.environ[SERVE_ARGS_ENV]).items()}
    return create_app(service_config(argparse.Namespace(**options)))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cloud.service.app import create_app
    from cloud.service.server import ServerLimits, uvicorn_config

    config = service_config(args)  # validated here, before any worker starts
    limits = ServerLimits(args.max_header_bytes, args.header_timeout, args.keep_alive, args.max_concurrency,
                          args.backlog)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding to {args.host}: put a TLS reverse proxy in front; device tokens travel in clear")
    if args.workers == 1:
        uvicorn.Server(uvicorn_config(create_app(config), args.host, args.port, limits, args.log_level)).run()
        return 0
    from uvicorn.supervisors import Multiprocess

    os.environ[SERVE_ARGS_ENV] = json.dumps({k: v for k, v in vars(args).items() if k != "func"})
    uv = uvicorn_config("cloud.service.cli:app_from_env", args.host, args.port, limits, args.log_level,
                        factory=True, workers=args.workers)
    server = uvicorn.Server(uv)
    Multiprocess(uv, target=server.run, sockets=[uv.bind_socket()]).run()
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from cloud.release.signing import keygen

    out = Path(args.out) if args.out else Path(args.data_dir) / "keys"
    private, public = keygen(out, overwrite=args.force)
    print(json.dumps({"private_key": str(private), "public_key": str(public)}) if args.json else
          f"private key {private} (keep it on the cloud side)\npublic key  {public} (pin it on devices: --public-key)")
    return 0


def cmd_add_device(args: argparse.Namespace) -> int:
    from cloud.service.auth import add_device

    client = remote(args)
    if client is not None:
        token = client.request("POST", "/devices", {"name": args.name})["token"]
    else:
        sessions, _ = open_registry(args)
        token = add_device(sessions, args.name)
    print(json.dumps({"device": args.name, "token": token}) if args.json else token)
    return 0


def cmd_revoke_device(args: argparse.Namespace) -> int:
    from cloud.service.auth import revoke_device

    client = remote(args)
    if client is not None:
        client.request("POST", f"/devices/{args.name}/revoke")
    else:
        sessions, _ = open_registry(args)
        revoke_device(sessions, args.name)
    print(json.dumps({"device": args.name, "revoked": True}) if args.json else
          f"revoked {args.name}: its token is refused from the next request on (an 'unchanged' "
          "304 answer may take up to the server's --release-cache seconds)")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from cloud.release.signing import load_private_key

    client = remote(args)
    if client is not None:  # the server signs with its own key
        from cloud.service.admin import bundle_tar

        out = client.request("POST", "/versions", raw=bundle_tar(args.bundle),
                             query={"channel": args.channel, "note": args.note, "accuracy": args.accuracy})
        print(json.dumps(out) if args.json else f"published {args.bundle} as v{out['version']} on {args.channel} "
                                                 f"({out['etag']}) at {args.server}")
        return 0
    _, registry = open_registry(args)
    key = load_private_key(_key_path(args))
    bundle = Path(args.bundle)
    accuracy = args.accuracy
    from device.runtime.native_log import quiet_native_output

    with quiet_native_output(stdout=False):  # LiteRT's XNNPACK line while the canary is computed
        release = registry.publish(bundle, args.channel, key, accuracy=accuracy,
                                   source_run=Path(args.run) if args.run else None, note=args.note)
    print(json.dumps(release.to_json()) if args.json else
          f"published {bundle} as v{release.version} on {args.channel} ({release.etag})")
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    client = remote(args)
    if client is not None:
        rows = client.request("GET", "/versions")
    else:
        _, registry = open_registry(args)
        rows = registry.versions()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        acc = "–" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%"
        print(f"v{r['version']:<4} {r['name']:<28} {r['mode']:<8} {acc:>8}  {','.join(r['channels']) or '-'}")
    return 0


def _statement_key(args: argparse.Namespace) -> Any:
    """The signing key for a release statement: devices take a promote or rollback only when it is signed."""
    from cloud.release.signing import load_private_key

    return None if args.unsigned else load_private_key(_key_path(args))


def cmd_promote(args: argparse.Namespace) -> int:
    client = remote(args)
    if client is not None:
        out = client.request("POST", f"/channels/{args.channel}/promote", {"version": args.version})
        print(f"{args.channel} → v{out['version']} at {args.server}")
        return 0
    _, registry = open_registry(args)
    release = registry.promote(args.version, args.channel, _statement_key(args))
    print(f"{args.channel} → v{release.version}" + ("" if release.statement else " (unsigned: devices keep what they run)"))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    client = remote(args)
    if client is not None:
        out = client.request("POST", f"/channels/{args.channel}/rollback")
        print(f"{args.channel} rolled back to v{out['version']} at {args.server}")
        return 0
    _, registry = open_registry(args)
    release = registry.rollback(args.channel, _statement_key(args))
    print(f"{args.channel} rolled back to v{release.version}"
          + ("" if release.statement else " (unsigned: devices keep what they run)"))
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from cloud.release.signing import load_private_key
    from cloud.service.retrain import RetrainConfig, retrain

    sessions, registry = open_registry(args)
    config = RetrainConfig(channel=args.channel, target_channel=args.target, epochs=args.epochs,
                           learning_rate=args.lr, holdout_fraction=args.holdout, seed=args.seed,
                           oversample=args.oversample)
    result = retrain(config, sessions, registry, load_private_key(_key_path(args)), Path(args.out))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.summary())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", default=DEFAULT_DATA, help=f"service data directory (default {DEFAULT_DATA})")
        p.add_argument("--database-url", default=None, help="SQLAlchemy URL (default $DATABASE_URL, else SQLite "
                                                            "in the data directory)")
        p.add_argument("--json", action="store_true")

    p = sub.add_parser("serve", help="run the HTTP service: registry, ingestion, dashboard (uvicorn)")
    data_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--rate", type=float, default=5.0, help="requests/s per device, on average")
    p.add_argument("--burst", type=int, default=20, help="requests a device may burst")
    p.add_argument("--max-request-bytes", type=int, default=1 << 20)
    p.add_argument("--max-batch", type=int, default=500, help="samples per upload")
    p.add_argument("--device-quota", type=int, default=1_000_000, help="samples stored per device")
    p.add_argument("--release-cache", type=float, default=1.0,
                   help="seconds a publish, promote or revocation may take to reach 'unchanged' (304) "
                        "answers, in every worker and host; every other answer sees it at once")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    p.add_argument("--admin-token-file", default=None,
                   help="file holding the admin token that guards the dashboard, /v1/versions, /docs and the admin "
                        "API (/v1/admin/…) "
                        "(without it they are off)")
    p.add_argument("--max-header-bytes", type=int, default=16 * 1024, help="largest request head accepted")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection may take to send a complete request head")
    p.add_argument("--keep-alive", type=int, default=5, help="seconds an idle keep-alive connection is kept")
    p.add_argument("--max-concurrency", type=int, default=512,
                   help="connections and requests in flight; beyond, 503")
    p.add_argument("--no-fast-poll", action="store_true",
                   help="answer unchanged-release polls through the full route too (slower; to compare)")
    p.add_argument("--backlog", type=int, default=2048,
                   help="connections the kernel queues before the server accepts them (a fleet reconnecting "
                        "at once overflows a short queue, and each dropped SYN costs a device 1-7 s)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes on the one port; rate limits then live in the database")
    p.add_argument("--shared-limits", action="store_true",
                   help="keep rate limits in the database even with one worker (several hosts, one PostgreSQL)")
    p.add_argument("--rollout-tick", type=float, default=5.0, help="seconds between rollout judgements")
    p.add_argument("--retention-days", type=float, default=None, help="delete collected samples older than this")
    p.add_argument("--auto-retrain", action="store_true",
                   help="start 'cloud retrain' when the channel's current version drifts past --max-drift")
    p.add_argument("--retrain-channel", default="stable", help="the channel --auto-retrain watches")
    p.add_argument("--max-drift", type=float, default=0.25, help="PSI beyond which --auto-retrain starts")
    p.add_argument("--key", default=None, help="private key for rollout and admin release statements "
                                               "(default DATA/keys/signing.key)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("keygen", help="create the Ed25519 signing key pair (DATA/keys)")
    data_args(p)
    p.add_argument("--out", default=None, help="key directory (default DATA/keys)")
    p.add_argument("--force", action="store_true", help="replace an existing key (devices must re-pin)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("add-device", help="register a device; prints its token once")
    data_args(p)
    remote_args(p)
    p.add_argument("name")
    p.set_defaults(func=cmd_add_device)

    p = sub.add_parser("revoke-device", help="revoke a device's token (refused from the next request on)")
    data_args(p)
    remote_args(p)
    p.add_argument("name")
    p.set_defaults(func=cmd_revoke_device)

    p = sub.add_parser("publish", help="sign a bundle and publish it as a new version on a channel")
    data_args(p)
    remote_args(p)
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--channel", default="stable")
    p.add_argument("--run", default=None, help="the training run it came from (model.keras), to allow retraining")
    p.add_argument("--accuracy", type=float, default=None, help="held-out accuracy (default: the manifest's)")
    p.add_argument("--note", default="")
    p.add_argument("--key", default=None, help="private key (default DATA/keys/signing.key)")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("versions", help="list published versions and their channels")
    data_args(p)
    remote_args(p)
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("promote", help="make a version current on a channel")
    data_args(p)
    remote_args(p)
    p.add_argument("version", type=int)
    p.add_argument("--channel", default="stable")
    p.add_argument("--key", default=None, help="private key that signs the release statement (default DATA/keys/signing.key)")
    p.add_argument("--unsigned", action="store_true", help="sign no release statement (devices keep what they run)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="make a channel's previous version current again")
    data_args(p)
    remote_args(p)
    p.add_argument("--channel", default="stable")
    p.add_argument("--key", default=None, help="private key that signs the release statement (default DATA/keys/signing.key)")
    p.add_argument("--unsigned", action="store_true", help="sign no release statement (devices keep what they run)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("retrain", help="fine-tune the current model on collected labelled samples; "
                                       "publish to canary if held-out accuracy does not drop")
    data_args(p)
    p.add_argument("--channel", default="stable", help="the channel whose current version is fine-tuned")
    p.add_argument("--target", default="canary", help="where a better model is published")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--holdout", type=float, default=0.3, help="fraction of collected labelled samples held out")
    p.add_argument("--oversample", type=int, default=3, help="repeat collected samples N times in the training set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/retrain", help="where the fine-tuned run and bundle go")
    p.add_argument("--key", default=None)
    p.set_defaults(func=cmd_retrain)

    register_fleet(sub, data_args)
