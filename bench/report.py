"""The results as a table for people and as JSON for machines."""
from __future__ import annotations

from dataclasses import dataclass

from bench.runner import Measurement
from bench.scenarios import Metric, Scenario

# results[scenario id][broker name]
Results = dict[str, dict[str, Measurement]]


@dataclass
class Row:
    scenario: Scenario
    metric: Metric
    values: dict[str, float | None]  # by broker name
    ratio: float | None  # first broker / second broker


def rows(scenarios: list[Scenario], results: Results, brokers: list[str]) -> list[Row]:
    out = []
    for sc in scenarios:
        for metric in sc.metrics:
            values = {}
            for b in brokers:
                m = results.get(sc.id, {}).get(b)
                values[b] = None if m is None or m.result.get("error") else metric.value(m.result)
            ratio = None
            if len(brokers) == 2:
                a, b = values[brokers[0]], values[brokers[1]]
                ratio = a / b if a is not None and b else None
            out.append(Row(sc, metric, values, ratio))
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "msg/s" or value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def table(rows_: list[Row], brokers: list[str]) -> str:
    ratio_head = f"{brokers[0]}/{brokers[1]}" if len(brokers) == 2 else ""
    head = ["scenario", "metric", *brokers] + ([ratio_head] if ratio_head else [])
    body = []
    for r in rows_:
        arrow = "higher is better" if r.metric.higher_is_better else "lower is better"
        line = [r.scenario.id, f"{r.metric.label} ({r.metric.unit}, {arrow})"]
        line += [_fmt(r.values[b], r.metric.unit) for b in brokers]
        if ratio_head:
            line.append("-" if r.ratio is None else f"{r.ratio:.2f}")
        body.append(line)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]

    def fmt_line(cells: list[str]) -> str:
        # Text columns left-aligned, numbers right-aligned.
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt_line(head), rule, *map(fmt_line, body)])


def cpu_lines(scenarios: list[Scenario], results: Results) -> list[str]:
    """How much CPU the load generator used against what the broker used."""
    out = []
    for sc in scenarios:
        parts = []
        for broker, m in results.get(sc.id, {}).items():
            if m.broker_cpu:
                parts.append(f"{broker} {m.loadgen_cpu:.2f}s / {m.broker_cpu:.2f}s "
                             f"= {m.loadgen_cpu / m.broker_cpu:.2f}")
        if parts:
            out.append(f"{sc.id}: " + "; ".join(parts))
    return out


def to_json(scenarios: list[Scenario], results: Results, brokers: list[str], meta: dict) -> dict:
    return {
        **meta,
        "brokers": brokers,
        "scenarios": [
            {
                "id": sc.id,
                "title": sc.title,
                "runs": {b: m.to_json() for b, m in results.get(sc.id, {}).items()},
                "metrics": [
                    {"label": r.metric.label, "unit": r.metric.unit,
                     "higher_is_better": r.metric.higher_is_better,
                     "values": r.values, "ratio": r.ratio}
                    for r in rows([sc], results, brokers)
                ],
            }
            for sc in scenarios
        ],
    }
