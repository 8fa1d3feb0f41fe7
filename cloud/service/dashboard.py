"""The dashboard at ``/``: versions, devices, samples and per-version accuracy, as plain HTML.

``dashboard_data`` queries; ``render`` is a pure function of its result.
"""

from __future__ import annotations

import html
import time
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import sessionmaker

from cloud.service.db import Device, Sample
from cloud.service.drift import MAJOR
from cloud.service.registry import Registry


def dashboard_data(sessions: sessionmaker, registry: Registry) -> dict[str, Any]:
    with sessions() as s:
        devices = [{"name": d.name, "last_seen": d.last_seen, "running": d.running_version, "samples": d.samples_stored,
                    "dropped": d.dropped, "last_event": d.last_event}
                   for d in s.scalars(select(Device).order_by(Device.name)).all()]
        labelled = func.sum(case((Sample.label.is_not(None), 1), else_=0))
        correct = func.sum(case((Sample.label == Sample.prediction, 1), else_=0))
        per_version = {v: {"samples": int(n), "labelled": int(lab or 0), "correct": int(c or 0)}
                       for v, n, lab, c in s.execute(select(Sample.model_version, func.count(), labelled, correct)
                                                     .group_by(Sample.model_version)).all()}
    from cloud.service.plots import WINDOW_S, render_plots
    from cloud.service.summaries import drift_table

    now = time.time()
    return {"versions": registry.versions(), "devices": devices, "per_version": per_version,
            "channels": registry.channels(), "now": now, "plots": render_plots(sessions, registry, now),
            "drift": drift_table(sessions, registry, since=now - WINDOW_S), "drift_threshold": MAJOR}


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "never"
    dt = max(0.0, now - t)
    return f"{dt:.0f} s ago" if dt < 120 else f"{dt / 60:.0f} min ago" if dt < 7200 else f"{dt / 3600:.1f} h ago"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def render(data: dict[str, Any]) -> str:
    e, now = html.escape, data["now"]
    per_version = data["per_version"]
    version_rows = []
    for v in data["versions"]:
        field = per_version.get(str(v["version"]), {})
        field_acc = field["correct"] / field["labelled"] if field.get("labelled") else None
        version_rows.append(
            f"<tr data-version='{v['version']}'><td>v{v['version']}</td><td>{e(v['name'])}</td><td>{e(v['mode'])}</td>"
            f"<td>{e(', '.join(v['channels'])) or '–'}</td><td>{_pct(v['accuracy'])}</td>"
            f"<td>{field.get('samples', 0)}</td><td>{_pct(field_acc)} <small>({field.get('labelled', 0)} labelled)</small></td>"
            f"<td>{'yes' if v['signed'] else '<b>no</b>'}</td><td>{e(v['note'])}</td></tr>")
    device_rows = [
        f"<tr data-device='{e(d['name'])}'><td>{e(d['name'])}</td><td>{e(d['running'] or '–')}</td>"
        f"<td>{_ago(d['last_seen'], now)}</td><td>{d['samples']}</td><td>{d['dropped']}</td><td>{e(d['last_event'] or '')}</td></tr>"
        for d in data["devices"]]
    other = sorted(k for k in per_version if not k.isdigit())
    other_rows = [f"<tr><td>{e(k)}</td><td>{per_version[k]['samples']}</td><td>"
                  f"{_pct(per_version[k]['correct'] / per_version[k]['labelled'] if per_version[k]['labelled'] else None)}"
                  f"</td></tr>" for k in other]
    threshold = data.get("drift_threshold", MAJOR)
    drift_rows, alerts = [], []
    for r in data.get("drift", []):
        high = r["score"] is not None and r["score"] > threshold
        if high:
            alerts.append(f"v{e(r['version'])} PSI {r['score']:.2f}")
        score = "–" if r["score"] is None else f"{r['score']:.3f}"
        conf = "–" if r["mean_confidence"] is None else f"{r['mean_confidence']:.3f}"
        cls = " class='drift-alert'" if high else ""
        drift_rows.append(f"<tr data-drift='{e(r['version'])}'{cls}>"
                          f"<td>v{e(r['version'])}</td><td>{r['devices']}</td><td>{r['predictions']}</td>"
                          f"<td>{score}</td><td>{conf}</td><td>{e(r['level'])}</td></tr>")
    alert = (f"<p class='alert' id='drift-alert'>Drift beyond PSI {threshold:g}: {', '.join(alerts)}</p>"
             if alerts else "")
    plots = "".join(f"<figure>{svg}</figure>" for svg in data.get("plots", {}).values())
    total = sum(v["samples"] for v in per_version.values())
    channels = ", ".join(f"{e(c)} → v{v}" for c, v in sorted(data["channels"].items())) or "none yet"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeloop fleet</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; background: #fafafa; }}
h1 {{ color: #0b5394; }} table {{ border-collapse: collapse; margin-bottom: 24px; background: white; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }} th {{ background: #dde7f3; }}
.summary {{ font-size: 1.1em; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 16px; }} figure {{ margin: 0; border: 1px solid #ccc; }}
.alert {{ background: #fde0dc; color: #cc0000; padding: 6px 10px; border: 1px solid #cc0000; font-weight: bold; }}
tr.drift-alert td {{ color: #cc0000; font-weight: bold; }}
</style></head><body>
<h1>edgeloop fleet</h1>
<p class="summary" id="summary">{len(data['versions'])} versions · {len(data['devices'])} devices ·
<span id="total-samples">{total}</span> samples collected · channels: {channels}</p>
{alert}<div class="plots" id="plots">{plots}</div>
<h2>Model versions</h2>
<table id="versions"><tr><th>version</th><th>name</th><th>mode</th><th>channels</th><th>held-out accuracy</th>
<th>samples</th><th>field accuracy</th><th>signed</th><th>note</th></tr>
{''.join(version_rows)}</table>
<h2>Devices</h2>
<table id="devices"><tr><th>device</th><th>running</th><th>last seen</th><th>samples</th><th>dropped on device</th>
<th>last event</th></tr>
{''.join(device_rows)}</table>
{'<h2>Drift</h2><table id="drift"><tr><th>version</th><th>devices</th><th>predictions</th><th>PSI</th>'
 '<th>mean confidence</th><th>level</th></tr>' + ''.join(drift_rows) + '</table>' if drift_rows else ''}
{'<h2>Samples from other models</h2><table id="other"><tr><th>model</th><th>samples</th><th>field accuracy</th></tr>'
 + ''.join(other_rows) + '</table>' if other_rows else ''}
</body></html>
"""
