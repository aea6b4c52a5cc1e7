"""The results as tables for people and as JSON for machines."""
from __future__ import annotations

from dataclasses import dataclass

from bench.runner import Measurement, median
from bench.scenarios import RATE_METRICS, Metric, Scenario

# results[scenario id][broker name]: one Measurement per run (--repeat)
Results = dict[str, dict[str, list[Measurement]]]


@dataclass
class Row:
    scenario: Scenario
    metric: Metric
    values: dict[str, float | None]  # by broker name (medians of the runs)
    ratio: float | None  # first broker / second broker (when the scenario ran on two)
    ran: list[str]  # the brokers the scenario ran on (a cluster runs only C1)


def summary(results: Results, sid: str, broker: str) -> Measurement | None:
    """The median of one scenario's runs on one broker."""
    runs = results.get(sid, {}).get(broker)
    return median(runs) if runs else None


def rows(scenarios: list[Scenario], results: Results, brokers: list[str]) -> list[Row]:
    out = []
    for sc in scenarios:
        medians = {b: summary(results, sc.id, b) for b in brokers}
        ran = [b for b in brokers if medians[b] is not None]
        for metric in sc.metrics:
            values = {}
            for b, m in medians.items():
                values[b] = None if m is None or m.result.get("error") else metric.value(m.result)
            ratio = None
            if len(ran) == 2:
                a, b = values[ran[0]], values[ran[1]]
                ratio = a / b if a is not None and b else None
            out.append(Row(sc, metric, values, ratio, ran))
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("msg/s", "msgs") or value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _grid(head: list[str], body: list[list[str]], text_cols: int) -> str:
    """Columns padded to their widest cell: text left-aligned, numbers right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < text_cols else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), rule, *map(line, body)])


def rates_table(rows_: list[Row], brokers: list[str]) -> str:
    """The throughput scenarios: one line per scenario and broker, a column per figure."""
    by_scenario: dict[str, dict[str, Row]] = {}
    for r in rows_:
        if r.scenario.rates:
            by_scenario.setdefault(r.scenario.id, {})[r.metric.key] = r
    if not by_scenario:
        return ""
    head = ["scenario", "broker", *(f"{m.label}, {m.unit}" for m in RATE_METRICS)]
    body = []
    for sid, metrics in by_scenario.items():
        ran = next(iter(metrics.values())).ran
        for i, b in enumerate(b for b in brokers if b in ran or not ran):
            body.append([sid if i == 0 else "", b,
                         *(_fmt(metrics[m.key].values[b], m.unit) for m in RATE_METRICS)])
    return _grid(head, body, 2)


def table(rows_: list[Row], brokers: list[str]) -> str:
    """The other scenarios: one line per figure, brokers side by side, and their ratio."""
    rest = [r for r in rows_ if not r.scenario.rates]
    if not rest:
        return ""
    brokers = [b for b in brokers if any(b in r.ran for r in rest)] or brokers
    ratio_head = f"{brokers[0]}/{brokers[1]}" if len(brokers) == 2 else ""
    head = ["scenario", "metric", *brokers] + ([ratio_head] if ratio_head else [])
    body = []
    for r in rest:
        arrow = "higher is better" if r.metric.higher_is_better else "lower is better"
        line = [r.scenario.id, f"{r.metric.label} ({r.metric.unit}, {arrow})"]
        line += [_fmt(r.values[b], r.metric.unit) for b in brokers]
        if ratio_head:
            line.append("-" if r.ratio is None else f"{r.ratio:.2f}")
        body.append(line)
    return _grid(head, body, 2)


def cpu_lines(scenarios: list[Scenario], results: Results, brokers: list[str]) -> list[str]:
    """How much CPU the load generator used against what the broker used (whole runs)."""
    out = []
    for sc in scenarios:
        parts = []
        for broker in brokers:
            m = summary(results, sc.id, broker)
            if m is not None and m.broker_cpu:
                parts.append(f"{broker} {m.loadgen_cpu:.2f}s / {m.broker_cpu:.2f}s "
                             f"= {m.loadgen_cpu / m.broker_cpu:.2f}")
        if parts:
            out.append(f"{sc.id}: " + "; ".join(parts))
    return out


def to_json(scenarios: list[Scenario], results: Results, brokers: list[str], meta: dict) -> dict:
    out_scenarios = []
    for sc in scenarios:
        by_broker = results.get(sc.id, {})
        medians = {b: summary(results, sc.id, b) for b in by_broker}
        out_scenarios.append({
            "id": sc.id,
            "title": sc.title,
            **({"mq_only": sc.mq_only} if sc.mq_only else {}),
            "runs": {b: [m.to_json() for m in runs] for b, runs in by_broker.items()},
            "median": {b: m.to_json() for b, m in medians.items() if m is not None},
            "metrics": [
                {"key": r.metric.key, "label": r.metric.label, "unit": r.metric.unit,
                 "higher_is_better": r.metric.higher_is_better,
                 "values": r.values, "ratio": r.ratio}
                for r in rows([sc], results, brokers)
            ],
        })
    return {**meta, "brokers": brokers, "scenarios": out_scenarios}
