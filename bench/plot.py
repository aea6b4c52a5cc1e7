"""Bar charts of the results: one wide throughput panel, then a small panel per latency or memory
figure (each scenario on its own scale, so S7's sub-millisecond bars are not dwarfed by S9's)."""
from __future__ import annotations

from pathlib import Path

from bench.report import Row


def _panels(rows_: list[Row]) -> dict[str, list[Row]]:
    panels: dict[str, list[Row]] = {}
    for r in rows_:
        unit = r.metric.unit
        key = unit if unit == "msg/s" else f"{r.scenario.id} {unit}"
        panels.setdefault(key, []).append(r)
    return panels


def plot(rows_: list[Row], brokers: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    panels = _panels(rows_)
    wide = [k for k in panels if k == "msg/s"]
    small = [k for k in panels if k != "msg/s"]
    nrows = len(wide) + (len(small) + 1) // 2
    fig = plt.figure(figsize=(11, 3.4 * nrows))
    grid = fig.add_gridspec(nrows, 2)
    axes = [fig.add_subplot(grid[0, :])] if wide else []
    axes += [fig.add_subplot(grid[len(wide) + i // 2, i % 2]) for i in range(len(small))]
    for ax, key in zip(axes, wide + small):
        _bars(ax, panels[key], brokers)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(ax, group: list[Row], brokers: list[str]) -> None:
    width = 0.8 / max(len(brokers), 1)
    for i, broker in enumerate(brokers):
        xs = [j + (i - (len(brokers) - 1) / 2) * width for j in range(len(group))]
        ys = [r.values[broker] or 0 for r in group]
        bars = ax.bar(xs, ys, width, label=broker)
        ax.bar_label(bars, labels=[_short(y) for y in ys], fontsize=7)
    unit = group[0].metric.unit
    better = "higher" if group[0].metric.higher_is_better else "lower"
    ax.set_ylabel(unit)
    ax.set_title(f"{unit}, {better} is better", fontsize=9)
    ax.set_xticks(range(len(group)))
    ax.set_xticklabels([f"{r.scenario.id}\n{r.metric.label}" for r in group], fontsize=8)
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
