"""The matrix as a self-contained HTML page."""
from __future__ import annotations

import datetime
import html
import json
from pathlib import Path

from .compare import difference
from .expect import to_json
from .outcome import FAILING
from .registry import Client
from .scenarios import Scenario
from .suite import BrokerResult

STYLE = """
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:4px 8px;text-align:center}
th{background:#f4f4f4}td.name{text-align:left}td.name small{color:#777}
.pass{background:#d9f2d9}.FAIL,.timeout{background:#f8d0d0;font-weight:bold}
.skipped,.n\\/a{background:#f0f0f0;color:#888}.not{background:#fff3cd}.xfail{background:#efe3f7}
.diff{outline:3px solid #e08a00;outline-offset:-3px}
pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:30em;text-align:left}
details{margin:.4em 0}summary{cursor:pointer}
"""


def cell_class(status: str) -> str:
    return "not" if status == "not installed" else status


def render(scenarios: list[Scenario], clients: list[Client], results: list[BrokerResult]) -> str:
    e = html.escape
    out = [f"<!doctype html><meta charset=utf-8><title>mq interop matrix</title><style>{STYLE}</style>",
           "<h1>AMQP client interop matrix</h1>",
           f"<p>{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
           + "; ".join(f"<b>{e(r.broker.label)}</b> {e(r.broker.url)} ({r.seconds:.0f}s)" for r in results)
           + ". Each cell shows " + " / ".join(e(r.broker.label) for r in results)
           + "; an orange frame marks where the brokers differ. Hover a cell for the reason.</p>"]
    out.append("<table><tr><th>scenario</th>" + "".join(
        f"<th title='{e(c.library)}'>{e(c.name)}<br><small>{e(c.language)}</small></th>" for c in clients)
        + "</tr>")
    details: list[str] = []
    for s in scenarios:
        out.append(f"<tr><td class=name>{e(s.name)}<br><small>{e(s.title)} · {e(' '.join(s.ids))}</small></td>")
        for c in clients:
            outs = [r.cells[(s.name, c.name)] for r in results]
            diff = difference(outs[0], outs[1]) if len(outs) > 1 else None
            title = " | ".join(f"{r.broker.label}: {o.status} {o.reason}" for r, o in zip(results, outs))
            if diff:
                title += f" | differs: {diff}"
            classes = cell_class(outs[0].status) + (" diff" if diff else "")
            text = " / ".join(o.status for o in outs)
            anchor = f"{s.name}--{c.name}"
            if diff or any(o.status in FAILING or o.status == "xfail" or o.notes for o in outs):
                text = f"<a href='#{e(anchor)}'>{e(text)}</a>"
                details.append(detail(anchor, s, c, results, outs, diff))
            out.append(f"<td class='{e(classes)}' title='{e(title)}'>{text}</td>")
        out.append("</tr>")
    out.append("</table>")
    missing = [c for c in clients if c.not_installed()]
    if missing:
        out.append("<p><b>Not installed:</b> " + "; ".join(
            f"{e(c.name)} ({e(c.not_installed() or '')})" for c in missing) + "</p>")
    if details:
        out.append("<h2>Failures, notes and differences</h2>")
        out.extend(details)
    return "\n".join(out)


def detail(anchor: str, s: Scenario, c: Client, results: list[BrokerResult], outs: list, diff: str | None) -> str:
    e = html.escape
    parts = [f"<h3 id='{e(anchor)}'>{e(s.name)} × {e(c.name)}</h3>"]
    if diff:
        parts.append(f"<p>Brokers differ: {e(diff)}</p>")
    for r, o in zip(results, outs):
        parts.append(f"<p><b>{e(r.broker.label)}</b>: {e(o.status)} {e(o.reason)} "
                     + "".join(f"<br><i>{e(n)}</i>" for n in o.notes) + "</p>")
        if o.observed is not None:
            parts.append("<details><summary>observed / expected</summary><pre>"
                         + e(json.dumps(o.observed, indent=1)[:20000]) + "</pre><pre>"
                         + e(json.dumps(to_json(o.expected), indent=1)[:20000]) + "</pre></details>")
    return "\n".join(parts)


def write(path: str, scenarios: list[Scenario], clients: list[Client], results: list[BrokerResult]) -> None:
    Path(path).write_text(render(scenarios, clients, results))
