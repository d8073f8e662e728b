"""fleetctl's table output: Go's ``text/tabwriter`` with tabs as padding, legends and placeholders.

fleetctl writes rows of tab-separated cells through a tabwriter with minwidth 0, tabwidth 8,
padding 1 and ``\\t`` as pad character: every column but the last is padded with TABs up to the
widest cell plus one, rounded up to the next multiple of 8.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

TAB_WIDTH = 8
PADDING = 1
SHORT_ID_LEN = 8
SHORT_HASH_LEN = 7


def tabwrite(rows: Sequence[Sequence[str]]) -> str:
    """Format rows as Go's tabwriter (padchar TAB) does; every line ends with ``\\n``."""
    widths: dict[int, int] = {}
    for row in rows:
        for col, cell in enumerate(row[:-1]):
            widths[col] = max(widths.get(col, 0), len(cell) + PADDING)
    lines = []
    for row in rows:
        parts = []
        for col, cell in enumerate(row):
            if col == len(row) - 1:
                parts.append(cell)
                continue
            cell_width = -(-widths[col] // TAB_WIDTH) * TAB_WIDTH
            parts.append(cell + "\t" * -(-(cell_width - len(cell)) // TAB_WIDTH))
        lines.append("".join(parts) + "\n")
    return "".join(lines)


def machine_id_legend(machine_id: str, full: bool) -> str:
    """``1234abcd...`` or the full ID."""
    return machine_id if full else machine_id[:SHORT_ID_LEN] + "..."


def machine_legend(machine: Mapping[str, Any], full: bool) -> str:
    """``1234abcd.../10.0.0.1`` (``--full``: the whole ID; no IP part when it has none)."""
    legend = machine_id_legend(str(machine.get("id", "")), full)
    return f"{legend}/{machine['primaryIP']}" if machine.get("primaryIP") else legend


def legend_of(machine_id: str, machines: Mapping[str, Mapping[str, Any]], full: bool) -> str:
    """The legend of ``machine_id``, the bare ID legend when it is not a live machine, ``-`` if empty."""
    if not machine_id:
        return "-"
    machine = machines.get(machine_id)
    return machine_legend(machine, full) if machine else machine_id_legend(machine_id, full)


def table(items: Sequence[Any], fields: Sequence[str], columns: Mapping[str, Callable[[Any], str]],
          legend: bool) -> str:
    """A table of ``items``: one column per field (upper-case header unless ``legend`` is False)."""
    rows = [[f.upper() for f in fields]] if legend else []
    rows += [[columns[f](item) or "-" for f in fields] for item in items]
    return tabwrite(rows)


def parse_fields(text: str, valid: Mapping[str, Any]) -> tuple[list[str], str]:
    """The requested ``--fields`` and an error message (``""`` when they are all valid)."""
    if not text:
        return [], "Must define output format"
    fields = text.split(",")
    for name in fields:
        if name not in valid:
            return [], f'Invalid key in output format: "{name}"'
    return fields, ""
