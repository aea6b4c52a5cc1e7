"""Bar charts of the results: wide panels for accepted/s and delivered/s of the throughput
scenarios, small ones for their backlog, RSS max and CPU per message, then a small panel per
figure of the other scenarios (each on its own scale, so S7's sub-millisecond bars are not
dwarfed by S9's)."""
from __future__ import annotations

from pathlib import Path
from textwrap import fill

from bench.report import Row


def _panels(rows_: list[Row]) -> dict[str, list[Row]]:
    """Throughput scenarios: a panel per figure (accepted, delivered, ...) across scenarios;
    the others: a panel per scenario and unit."""
    panels: dict[str, list[Row]] = {}
    for r in rows_:
        if r.scenario.rates:
            key = f"{r.metric.label}, {r.metric.unit}"
        elif r.metric.unit == "msg/s":
            key = f"{r.scenario.id} msg/s"
        else:
            key = f"{r.scenario.id} {r.metric.unit}"
        panels.setdefault(key, []).append(r)
    return panels


def _wide(group: list[Row]) -> bool:
    return group[0].scenario.rates and group[0].metric.unit == "msg/s"


def plot(rows_: list[Row], brokers: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    panels = _panels(rows_)
    wide = [k for k in panels if _wide(panels[k])]
    small = [k for k in panels if not _wide(panels[k])]
    nrows = len(wide) + (len(small) + 1) // 2
    fig = plt.figure(figsize=(11, 3.4 * nrows))
    grid = fig.add_gridspec(nrows, 2)
    axes = [fig.add_subplot(grid[i, :]) for i in range(len(wide))]
    axes += [fig.add_subplot(grid[len(wide) + i // 2, i % 2]) for i in range(len(small))]
    for ax, key in zip(axes, wide + small):
        _bars(ax, panels[key], brokers)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / nrows))  # room for the title
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(ax, group: list[Row], brokers: list[str]) -> None:
    width = 0.8 / max(len(brokers), 1)
    for i, broker in enumerate(brokers):
        xs = [j + (i - (len(brokers) - 1) / 2) * width for j in range(len(group))]
        values = [r.values[broker] for r in group]
        bars = ax.bar(xs, [v or 0 for v in values], width, label=broker)
        # No figure (the run failed) is not a zero.
        ax.bar_label(bars, labels=["n/a" if v is None else _short(v) for v in values], fontsize=7)
    unit = group[0].metric.unit
    better = "higher" if group[0].metric.higher_is_better else "lower"
    ax.set_ylabel(unit)
    rates = group[0].scenario.rates
    title = f"{group[0].metric.label}, {unit}" if rates else f"{group[0].scenario.id}: {unit}"
    ax.set_title(f"{title}, {better} is better", fontsize=9)
    ax.set_xticks(range(len(group)))
    # A panel of one figure across scenarios names the scenarios; otherwise the figures.
    labels = [r.scenario.id if rates else f"{r.scenario.id}\n{fill(r.metric.label, 18)}"
              for r in group]  # wrapped: R1's four long labels share one panel
    ax.set_xticklabels(labels, fontsize=8)
    ax.margins(y=0.15)
    ax.legend(fontsize=7)


def _short(y: float) -> str:
    if y >= 1e6:
        return f"{y / 1e6:.1f}M"
    if y >= 1e4:
        return f"{y / 1e3:.0f}k"
    if y >= 100:
        return f"{y:,.0f}"
    return f"{y:.3g}"
