"""The plain-text matrix: scenarios down, clients across, then the reasons."""
from __future__ import annotations

from .compare import difference
from .outcome import FAILING, NOT_INSTALLED, PASS
from .registry import Client
from .scenarios import Scenario
from .suite import BrokerResult

SYMBOL = {PASS: "pass", "FAIL": "FAIL", "timeout": "TIME", "n/a": "-", "skipped": "skip",
          NOT_INSTALLED: "n/i", "xfail": "xfail"}


def render(scenarios: list[Scenario], clients: list[Client], results: list[BrokerResult]) -> str:
    lines: list[str] = []
    labels = " / ".join(r.broker.label for r in results)
    diffs: list[str] = []
    rows: list[list[str]] = []
    for s in scenarios:
        row = []
        for c in clients:
            outs = [r.cells[(s.name, c.name)] for r in results]
            text = "/".join(SYMBOL.get(o.status, o.status) for o in outs)
            if len(outs) > 1 and (d := difference(outs[0], outs[1])):
                text += " !="
                diffs.append(f"  {s.name} x {c.name}: {d}")
            row.append(text)
        rows.append(row)
    head_w = max(len(s.name) for s in scenarios) + 2
    widths = [max([len(c.name)] + [len(row[i]) for row in rows]) for i, c in enumerate(clients)]
    lines.append(f"{'scenario':<{head_w}}" + " ".join(f"{c.name:<{w}}" for c, w in zip(clients, widths)))
    for s, row in zip(scenarios, rows):
        lines.append(f"{s.name:<{head_w}}" + " ".join(f"{t:<{w}}" for t, w in zip(row, widths)).rstrip())
    lines.append("")
    lines.append(f"cells: {labels}; pass, FAIL, TIME(out), skip(ped), - (not applicable), "
                 "n/i (client not installed), xfail (a known client bug), != (brokers differ)")
    for r in results:
        failures = [(k, o) for k, o in r.cells.items() if o.status in FAILING]
        notes = sorted({f"{k[1]}: {n}" for k, o in r.cells.items() for n in o.notes})
        lines.append(f"\n[{r.broker.label}] {r.broker.url} - {summary(r)} in {r.seconds:.0f}s")
        for (s, c), o in sorted(failures, key=lambda kv: kv[0]):
            lines.append(f"  {o.status} {s} x {c}: {o.reason}")
        skipped = sorted({o.reason for o in r.cells.values() if o.status == "skipped"})
        for reason in skipped:
            lines.append(f"  skipped: {reason}")
        for (s, c), o in sorted(r.cells.items(), key=lambda kv: kv[0]):
            if o.status == "xfail":
                lines.append(f"  xfail {s} x {c}: {o.reason}")
        for note in notes:
            lines.append(f"  note {note}")
    missing = [c for c in clients if c.not_installed()]
    if missing:
        lines.append("\nnot installed: " + "; ".join(f"{c.name} ({c.not_installed()})" for c in missing))
    if diffs:
        lines.append(f"\ndifferences ({results[0].broker.label} vs {results[1].broker.label}):")
        lines.extend(diffs)
    return "\n".join(lines)


def summary(result: BrokerResult) -> str:
    counts: dict[str, int] = {}
    for o in result.cells.values():
        counts[o.status] = counts.get(o.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
