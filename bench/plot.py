"""Bar charts of the results, one panel per unit (throughput, latency, memory)."""
from __future__ import annotations

from pathlib import Path

from bench.report import Row


def plot(rows_: list[Row], brokers: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    units: dict[str, list[Row]] = {}
    for r in rows_:
        units.setdefault(r.metric.unit, []).append(r)
    fig, axes = plt.subplots(len(units), 1, figsize=(10, 3.2 * len(units)), squeeze=False)
    width = 0.8 / max(len(brokers), 1)
    for ax, (unit, group) in zip(axes[:, 0], units.items()):
        for i, broker in enumerate(brokers):
            xs = [j + (i - (len(brokers) - 1) / 2) * width for j in range(len(group))]
            ys = [r.values[broker] or 0 for r in group]
            bars = ax.bar(xs, ys, width, label=broker)
            ax.bar_label(bars, labels=[_short(y) for y in ys], fontsize=7)
        better = "higher" if group[0].metric.higher_is_better else "lower"
        ax.set_ylabel(unit)
        ax.set_title(f"{unit} ({better} is better)", fontsize=10)
        ax.set_xticks(range(len(group)))
        ax.set_xticklabels([f"{r.scenario.id} {r.metric.label}" for r in group], fontsize=8)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(y: float) -> str:
    if y >= 1e6:
        return f"{y / 1e6:.1f}M"
    if y >= 1e4:
        return f"{y / 1e3:.0f}k"
    return f"{y:.3g}"
