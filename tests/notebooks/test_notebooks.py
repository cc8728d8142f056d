"""The notebooks run top to bottom (nbclient) with small settings against a temporary store."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_these_without_outputs():
    assert [p.name for p in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_hidden_attention_decay.ipynb",
        "03_sequence_length.ipynb",
        "04_study_report.ipynb",
        "05_atari.ipynb",
        "06_explain.ipynb",
        "07_memory.ipynb",
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, request, tmp_path, monkeypatch):
    atari = "atari" in path.stem
    if "memory" in path.stem:  # builds its own tiny MiniGrid Memory data
        pytest.importorskip("minigrid")
        dataset = str(tmp_path / "unused-mujoco-dataset.hdf5")
    elif atari:  # builds its own tiny Breakout data (the `atari` extra: ale-py's ROMs, OpenCV)
        pytest.importorskip("ale_py")
        pytest.importorskip("cv2")
        dataset = str(tmp_path / "unused-mujoco-dataset.hdf5")
    else:
        dataset = str(request.getfixturevalue("hopper_small"))
    monkeypatch.setenv("DEMA_LAB_NB_SMALL", "1")
    monkeypatch.setenv("DEMA_LAB_NB_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("DEMA_LAB_NB_DATASET", dataset)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert any(o.get("data") for c in nb.cells for o in c.get("outputs", [])), "no cell displayed anything"
    if atari:  # the gamer-normalized score's references and the (a, R, s) token labels were shown
        text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
        assert "Breakout: random 1.7, human 30.5" in text, text
        assert "window tokens: a-3 R-2 s-2 a-2 R-1 s-1 a-1 R0 s0" in text, text
