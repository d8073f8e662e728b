"""Draw the ratios of a macro result as a PNG: ``python -m bench.chart [RESULT.json] [-o OUT.png]``.

One horizontal bar per workload from 1 (etcd) to fastkv / etcd, on a log scale. Bars are green
where fastkv is better (above 1 for throughput, below 1 for times and memory), red where it is
worse; a black tick marks the workload's limit from bench/floors.toml. Needs matplotlib (the
``bench`` extra). Without an argument the newest result in bench/results/ is drawn.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.gate import FLOORS_PATH, Floor, load_floors
from bench.macro import RESULTS_DIR


def newest_result(results_dir: Path = RESULTS_DIR) -> Path:
    results = sorted(results_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not results:
        raise SystemExit(f"no results in {results_dir}: run python -m bench.macro first")
    return results[-1]


def bars(doc: dict[str, Any]) -> list[tuple[str, float, bool]]:
    """(label, ratio, fastkv is better) for every workload with a ratio, in the result's order."""
    out = []
    for w in doc["workloads"]:
        if w["ratio"] is None:
            continue
        better = w["ratio"] >= 1 if w["better"] == "higher" else w["ratio"] <= 1
        arrow = "↑" if w["better"] == "higher" else "↓"
        out.append((f"{w['name']} {arrow}", w["ratio"], better))
    return out


def draw(doc: dict[str, Any], floors: dict[str, Floor], out: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = bars(doc)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    y = list(range(len(rows)))[::-1]
    colors = ["#2e8b57" if ok else "#c0392b" for _, _, ok in rows]
    ax.barh(y, [r - 1 for _, r, _ in rows], left=1, color=colors)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.axvline(1.0, color="grey", linewidth=1)
    for yi, (label, ratio, _) in zip(y, rows, strict=True):
        ax.text(ratio, yi, f" {ratio:.2f}", va="center", fontsize=8)
        floor = floors.get(label.split()[0])
        if floor is not None:
            ax.plot([floor.limit], [yi], marker="|", color="black", markersize=14)
    ax.set_yticks(y, [label for label, _, _ in rows], fontsize=8)
    commit = doc["commit"]["sha"][:8] + ("+" if doc["commit"]["dirty"] else "")
    ax.set_title(f"fastkv / etcd ({doc['mode']} run, {commit}, {doc['started']}); "
                 "↑ higher is better, ↓ lower is better", fontsize=9)
    ax.set_xlabel("ratio (log scale); | = floor")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Chart the ratios of a macro result.")
    p.add_argument("result", nargs="?", type=Path)
    p.add_argument("-o", "--output", type=Path)
    p.add_argument("--floors", type=Path, default=FLOORS_PATH)
    args = p.parse_args(argv)
    path = args.result or newest_result()
    out = args.output or path.with_suffix(".png")
    draw(json.loads(path.read_text()), load_floors(args.floors), out)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
