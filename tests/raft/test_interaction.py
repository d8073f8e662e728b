"""Golden interaction scripts: each file in testdata/ is run and must reproduce its own output.

Regenerate after an intended change with ``python -m fastkv.raft.interaction --rewrite FILE``
and review the diff."""

from pathlib import Path

import pytest

from fastkv.raft.interaction import check_file, run_script

TESTDATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))


def test_scripts_exist_for_every_topic() -> None:
    names = {p.stem for p in SCRIPTS}
    assert {"election", "prevote", "checkquorum", "replication", "snapshot", "confchange", "transfer",
            "readindex"} <= names


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_script_output_matches(path: Path) -> None:
    diff = check_file(path, rewrite=False)
    assert not diff, f"{path.name} differs; rerun with --rewrite and review:\n{diff}"


def test_unknown_command_is_reported_in_the_output() -> None:
    assert "error: ValueError: unknown command 'frobnicate'" in run_script("frobnicate 1\n")
