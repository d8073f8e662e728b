"""The release gate: a short macro run checked against bench/floors.toml.

``python -m bench.gate`` runs the macro suite in its ``gate`` mode (every group, shorter runs,
20,000 keys: about three minutes on a 2-core machine), prints every ratio next to its limit and
exits 1 when one is worse than its limit, when a limited workload is missing from the run, or
when fastkv failed requests in a run. ``--results FILE`` checks a result written earlier instead
of running.

floors.toml holds one table per workload. A ratio is always fastkv / etcd; a "higher is
better" workload (throughput) has ``min``: its ratio must not fall below it; a "lower is
better" one (latency, time, memory) has ``max``: its ratio must not rise above it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FLOORS_PATH = Path(__file__).resolve().parent / "floors.toml"


@dataclass(frozen=True)
class Floor:
    """The worst acceptable ratio for one workload: ``min`` (higher is better) or ``max``."""

    name: str
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if (self.min is None) == (self.max is None):
            raise ValueError(f"floor {self.name!r} needs exactly one of min and max")

    @property
    def better(self) -> str:
        return "higher" if self.min is not None else "lower"

    @property
    def limit(self) -> float:
        return self.min if self.min is not None else self.max  # type: ignore[return-value]

    def holds(self, ratio: float) -> bool:
        return ratio >= self.min if self.min is not None else ratio <= self.max  # type: ignore[operator]


@dataclass(frozen=True)
class Verdict:
    """One workload's outcome. ``ok`` False fails the gate; ``reason`` says why."""

    name: str
    ratio: float | None
    floor: Floor | None
    ok: bool
    reason: str


def parse_floors(data: dict[str, Any]) -> dict[str, Floor]:
    """Floors from parsed TOML: ``{name: {"min": x}}`` or ``{name: {"max": x}}``."""
    floors = {}
    for name, table in data.items():
        if not isinstance(table, dict) or set(table) - {"min", "max"}:
            raise ValueError(f"floor {name!r}: expected a table with min or max, got {table!r}")
        floors[name] = Floor(name, table.get("min"), table.get("max"))
    return floors


def load_floors(path: Path = FLOORS_PATH) -> dict[str, Floor]:
    with open(path, "rb") as f:
        return parse_floors(tomllib.load(f))


def check(doc: dict[str, Any], floors: dict[str, Floor]) -> list[Verdict]:
    """A verdict for every workload in ``doc`` and for every floor the run lacks."""
    verdicts = []
    candidate = doc["settings"].get("candidate", "fastkv")
    if candidate != "fastkv":
        verdicts.append(Verdict("candidate", None, None, False, f"fastkv's slot ran {candidate}"))
    seen = set()
    for w in doc["workloads"]:
        name, ratio = w["name"], w["ratio"]
        seen.add(name)
        floor = floors.get(name)
        if w["fastkv"]["errors"]:
            verdicts.append(Verdict(name, ratio, floor, False, "fastkv failed requests"))
        elif floor is None:
            verdicts.append(Verdict(name, ratio, None, True, "no floor"))
        elif floor.better != w["better"]:
            verdicts.append(Verdict(name, ratio, floor, False,
                                    f"floor is for {floor.better}-is-better, the workload is {w['better']}"))
        elif ratio is None:
            verdicts.append(Verdict(name, None, floor, False, "no ratio"))
        elif floor.holds(ratio):
            verdicts.append(Verdict(name, ratio, floor, True, "ok"))
        else:
            side = "below its floor" if floor.min is not None else "above its ceiling"
            verdicts.append(Verdict(name, ratio, floor, False, f"{ratio:.2f} is {side} {floor.limit:.2f}"))
    for name in sorted(set(floors) - seen):
        verdicts.append(Verdict(name, None, floors[name], False, "not measured"))
    return verdicts


def passed(verdicts: list[Verdict]) -> bool:
    return all(v.ok for v in verdicts)


def format_verdicts(verdicts: list[Verdict]) -> str:
    width = max([len("workload"), *(len(v.name) for v in verdicts)])
    lines = [f"{'workload':<{width}} {'ratio':>7} {'limit':>9}  verdict"]
    for v in verdicts:
        ratio = "-" if v.ratio is None else f"{v.ratio:.2f}"
        limit = "-" if v.floor is None else f"{'≥' if v.floor.min is not None else '≤'} {v.floor.limit:.2f}"
        lines.append(f"{v.name:<{width}} {ratio:>7} {limit:>9}  {'PASS' if v.ok else 'FAIL'} {v.reason}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the macro suite's gate mode and check bench/floors.toml.")
    p.add_argument("--results", type=Path, help="check this result JSON instead of running the suite")
    p.add_argument("--floors", type=Path, default=FLOORS_PATH)
    args = p.parse_args(argv)
    floors = load_floors(args.floors)
    if args.results:
        doc = json.loads(args.results.read_text())
    else:
        from bench import macro

        doc, path = macro.run_suite(macro.MODES["gate"], set(macro.GROUPS))
        print(macro.format_table(doc))
        print(f"\nresult: {path}\n")
    verdicts = check(doc, floors)
    print(format_verdicts(verdicts))
    ok = passed(verdicts)
    print("gate: PASS" if ok else "gate: FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
