"""Exit statuses of commands given a name that does not exist: 2 (bad input) with one line that
names it and what exists, never 0 with an empty result or 1 (reserved for data that could not be
built or read)."""

import shutil
from pathlib import Path

import pytest

from dema_lab.cli.main import main

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy_store"


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_data_info_of_an_unknown_name_exits_2(capsys, tmp_path):
    assert main(["data", "info", "nosuch"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("dema-lab data info: unknown dataset 'nosuch'") and "hopper-medium" in line
    # a named file that is missing stays a data error (1), as documented for `data`
    assert main(["data", "info", str(tmp_path / "missing.hdf5")]) == 1
    assert "missing.hdf5" in _one_line(capsys.readouterr().err)


@pytest.fixture
def legacy_copy(tmp_path) -> str:
    """A copy of tests/data/legacy_store (sweep "legacy", two finished runs)."""
    dest = tmp_path / "store"
    shutil.copytree(LEGACY, dest)
    return str(dest)


def test_report_of_an_unknown_sweep_exits_2_naming_the_sweeps(legacy_copy, capsys, tmp_path):
    out = tmp_path / "report.md"
    assert main(["report", "--store", legacy_copy, "--sweep", "nosuch", "--no-latency", "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("dema-lab report: ") and "'nosuch'" in line and "legacy" in line
    assert not out.exists()  # no empty report written
    assert main(["report", "--store", legacy_copy, "--sweep", "legacy", "--no-latency", "--out", str(out)]) == 0
    assert "2 runs" in out.read_text()
