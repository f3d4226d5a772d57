"""PNG of stage latency per contender (matplotlib, headless)."""
from __future__ import annotations

import os
from typing import Any


def plot_stages(rows: list[dict[str, Any]], path: str | os.PathLike, title: str) -> None:
    """Grouped bars: one group per stage, one bar per contender (median, whisker to p90), log scale.

    rows: dicts with contender, stage, median_ms and p90_ms (None: not applicable, left out)."""
    from apclip.extras import require

    matplotlib = require("matplotlib", "bench", "--plot")
    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    from apclip.fileio import atomic_write

    timed = [r for r in rows if r.get("median_ms")]
    stages = list(dict.fromkeys(r["stage"] for r in timed))
    contenders = list(dict.fromkeys(r["contender"] for r in timed))
    width = 0.8 / max(1, len(contenders))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(stages) + 2), 4.5))
    for i, contender in enumerate(contenders):
        xs, heights, errors = [], [], []
        for j, stage in enumerate(stages):
            for r in timed:
                if r["contender"] == contender and r["stage"] == stage:
                    xs.append(j + (i - (len(contenders) - 1) / 2) * width)
                    heights.append(r["median_ms"])
                    errors.append(max(0.0, (r.get("p90_ms") or r["median_ms"]) - r["median_ms"]))
        ax.bar(xs, heights, width, yerr=[[0] * len(errors), errors], label=contender, capsize=2)
    ax.set_xticks(range(len(stages)), stages, rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("ms (median, whisker to p90)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path, mode=None, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
