"""``edgeloop cloud rollout|drift|forget-device``, on a local data directory or a remote server.

With ``--server URL --admin-token-file F`` a command goes through the admin API
(:mod:`cloud.service.admin`); otherwise it opens the data directory's store directly.
Rollouts advance and halt while ``edgeloop cloud serve`` runs (its background tick).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

ROLLOUT_VERBS = ("status", "pause", "resume", "abort")


def remote(args: argparse.Namespace) -> Any | None:
    """An :class:`AdminClient` when ``--server`` is given, else None (act on ``--data-dir``)."""
    if not getattr(args, "server", None):
        return None
    from cloud.service.admin_client import AdminClient

    return AdminClient.from_token_file(args.server, args.admin_token_file)


def remote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=None, help="act on this server through its admin API, e.g. http://host:8000")
    p.add_argument("--admin-token-file", default=None, help="the admin token (with --server)")


def _local_key(args: argparse.Namespace) -> Any | None:
    from pathlib import Path

    from cloud.release.signing import load_private_key

    path = Path(args.key) if getattr(args, "key", None) else Path(args.data_dir) / "keys" / "signing.key"
    return load_private_key(path) if path.is_file() else None


def _print_rollout(r: dict[str, Any]) -> None:
    plan = r["plan"]
    stages = " → ".join(f"{s:g}%" for s in plan["stages"])
    print(f"rollout {r['id']}: v{r['version']} on {r['channel']} (base v{r['base_version']}), {r['status']}, "
          f"stage {r['stage'] + 1}/{len(plan['stages'])} at {r['percent']:g}%  [{stages}, hold {plan['hold_s']:g} s]")
    for d in r["decisions"]:
        when = time.strftime("%H:%M:%S", time.gmtime(d["time"]))
        f = d["figures"]
        figures = ""
        if f:
            acc = "–" if f.get("accuracy") is None else f"{100 * f['accuracy']:.1f}%"
            base = "–" if f.get("baseline_accuracy") is None else f"{100 * f['baseline_accuracy']:.1f}%"
            rb = "–" if f.get("rollback_rate") is None else f"{100 * f['rollback_rate']:.0f}%"
            er = "–" if f.get("error_rate") is None else f"{100 * f['error_rate']:.2f}%"
            figures = (f"  [devices {f['devices_reporting']}/{f['devices_in_stage']}, predictions {f['predictions']}, "
                       f"rollbacks {rb}, errors {er}, field accuracy {acc} vs {base}"
                       + (f", PSI {f['drift']:.3f}" if f.get("drift") is not None else "") + "]")
        print(f"  {when} {d['percent']:>5g}%  {d['action']:<8} {d['reason']}{figures}")
    if "next" in r:
        print(f"  now: {r['next']['action']} — {r['next']['reason']}")


def cmd_rollout(args: argparse.Namespace) -> int:
    from cloud.service.rollout import RolloutPlan, Thresholds, parse_duration, parse_stages

    client = remote(args)
    if args.what in ROLLOUT_VERBS:
        ref = args.ref or args.channel
        if client is not None:
            out = client.request("GET", f"/rollouts/{ref}") if args.what == "status" else \
                client.request("POST", f"/rollouts/{ref}/{args.what}")
        else:
            from cloud.service.rollout_store import rollout_status, set_state
            from cloud.service.store import open_registry

            sessions, registry = open_registry(args)
            if args.what == "status":
                out = rollout_status(sessions, registry, ref)[0]
            else:
                set_state(sessions, ref, args.what, registry=registry, signing_key=_local_key(args))
                out = rollout_status(sessions, registry, ref)[0]
        if args.json:
            print(json.dumps(out, indent=2))
        elif "decisions" in out:
            _print_rollout(out)
        else:
            print(f"rollout {out['id']}: {out['status']}")
        return 0
    if not args.what.isdigit():
        raise ValueError(f"rollout takes a version number or one of {', '.join(ROLLOUT_VERBS)}, got {args.what!r}")
    body = {"version": int(args.what), "channel": args.channel, "stages": args.stages, "hold": args.hold,
            "min_devices": args.min_devices, "min_labelled": args.min_labelled, "min_predictions": args.min_predictions,
            "max_rollback_rate": args.max_rollback_rate, "max_error_rate": args.max_error_rate,
            "max_accuracy_drop": args.max_accuracy_drop, "max_drift": args.max_drift}
    if client is not None:
        out = client.request("POST", "/rollouts", body)
    else:
        from cloud.service.rollout_store import start_rollout
        from cloud.service.store import open_registry

        plan = RolloutPlan(stages=parse_stages(args.stages), hold_s=parse_duration(args.hold),
                           min_devices=args.min_devices, min_labelled=args.min_labelled,
                           min_predictions=args.min_predictions,
                           thresholds=Thresholds(args.max_rollback_rate, args.max_error_rate, args.max_accuracy_drop,
                                                 args.max_drift))
        sessions, registry = open_registry(args)
        out = start_rollout(sessions, registry, int(args.what), args.channel, plan, signing_key=_local_key(args))
    print(json.dumps(out, indent=2) if args.json else
          f"rollout {out['id']}: v{out['version']} to {out['percent']:g}% of {out['channel']} "
          f"(then {', '.join(f'{s:g}%' for s in out['plan']['stages'][1:])}; hold {out['plan']['hold_s']:g} s)")
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from cloud.service.rollout import parse_duration

    since = time.time() - parse_duration(args.since) if args.since else 0.0
    client = remote(args)
    if client is not None:
        rows = client.request("GET", "/drift", query={"per_device": str(bool(args.per_device)).lower(), "since": since})
    else:
        from cloud.service.store import open_registry
        from cloud.service.summaries import drift_table

        sessions, registry = open_registry(args)
        rows = drift_table(sessions, registry, since=since, per_device=args.per_device)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'version':<8} {'device':<16} {'devices':>7} {'predictions':>11} {'PSI':>7} {'conf. PSI':>9} "
          f"{'input PSI':>9} {'mean conf.':>10} {'ref. conf.':>10} {'field acc.':>10}  level")

    def num(v: float | None, fmt: str = "{:.3f}") -> str:
        return "–" if v is None else fmt.format(v)

    for r in rows:
        print(f"v{r['version']:<7} {(r['device'] or 'all'):<16} {r['devices']:>7} {r['predictions']:>11} "
              f"{num(r['score']):>7} {num(r['confidence_psi']):>9} {num(r['input_psi']):>9} "
              f"{num(r['mean_confidence']):>10} {num(r['reference_confidence']):>10} "
              f"{num(r['field_accuracy'], '{:.1%}'):>10}  {r['level']}")
    return 0


def cmd_forget_device(args: argparse.Namespace) -> int:
    client = remote(args)
    if client is not None:
        n = client.request("DELETE", f"/devices/{args.name}/samples")["deleted"]
    else:
        from cloud.service.governance import forget_device
        from cloud.service.store import open_registry

        sessions, _ = open_registry(args)
        n = forget_device(sessions, args.name)
    print(json.dumps({"device": args.name, "deleted": n}) if args.json else f"deleted {n} samples of {args.name}")
    return 0


def register(sub: argparse._SubParsersAction, data_args: Any) -> None:
    p = sub.add_parser("rollout", help="roll a version out in stages that advance or halt themselves; "
                                       "or 'rollout status|pause|resume|abort [ID|CHANNEL]'")
    data_args(p)
    remote_args(p)
    p.add_argument("what", help="a version to roll out, or status|pause|resume|abort")
    p.add_argument("ref", nargs="?", default=None, help="rollout id or channel (default: --channel)")
    p.add_argument("--channel", default="stable")
    p.add_argument("--stages", default="5,25,100", help="percentages of the channel's devices, ending at 100")
    p.add_argument("--hold", default="10m", help="how long each stage runs before it may advance (s, m, h)")
    p.add_argument("--min-devices", type=int, default=1, help="devices of a stage that must report before it advances")
    p.add_argument("--min-labelled", type=int, default=20, help="labelled predictions needed to compare field accuracy")
    p.add_argument("--min-predictions", type=int, default=20, help="predictions needed to judge errors and drift")
    p.add_argument("--max-rollback-rate", type=float, default=0.1)
    p.add_argument("--max-error-rate", type=float, default=0.01)
    p.add_argument("--max-accuracy-drop", type=float, default=0.05, help="field accuracy drop vs the previous version")
    p.add_argument("--max-drift", type=float, default=None, help="PSI against the version's reference profile")
    p.add_argument("--key", default=None, help="private key (default DATA/keys/signing.key)")
    p.set_defaults(func=cmd_rollout)

    p = sub.add_parser("drift", help="drift (PSI) per version, and per device, against each version's profile")
    data_args(p)
    remote_args(p)
    p.add_argument("--per-device", action="store_true")
    p.add_argument("--since", default=None, help="only summaries from this long ago (e.g. 1h); default all")
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser("forget-device", help="delete every sample a device sent (it stays registered)")
    data_args(p)
    remote_args(p)
    p.add_argument("name")
    p.set_defaults(func=cmd_forget_device)
