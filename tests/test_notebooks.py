"""The notebooks run top to bottom (nbclient) with small settings against a temporary store."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_four_notebooks_without_outputs():
    assert [p.name for p in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_hidden_attention_decay.ipynb",
        "03_sequence_length.ipynb",
        "04_study_report.ipynb",
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, hopper_small, tmp_path, monkeypatch):
    monkeypatch.setenv("DEMA_LAB_NB_SMALL", "1")
    monkeypatch.setenv("DEMA_LAB_NB_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("DEMA_LAB_NB_DATASET", str(hopper_small))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert any(o.get("data") for c in nb.cells for o in c.get("outputs", [])), "no cell displayed anything"
