"""The prepared GPU check runs end to end on the CPU (its dry run), so the one
device call a lent GPU allows does not fail on a typo. On the CPU both sides are the same device:
the reloaded checkpoint must act exactly as the model that saved it."""

import json

from benchmarks import cuda_check
from benchmarks.report import write_section


def test_cuda_check_dry_run_on_cpu(tmp_path):
    rep = cuda_check.check("cpu", steps=8, out=tmp_path, repeat=2)
    assert rep["scan_backend"] == "numba" and rep["gpu"] is None
    tr = rep["train"]
    assert tr["finite"] and len(tr["first5_device"]) == 5
    assert tr["first5_max_rel_diff"] == 0.0  # same device, same start, same batch
    assert tr["loss_last"] < tr["loss_first"]
    assert rep["actions"]["steps"] == cuda_check.OBS_STEPS
    assert rep["actions"]["float32_max_abs_diff"] == 0.0 and rep["actions"]["float64_max_abs_diff"] == 0.0
    assert rep["scan"]["device"]["fwd"] > 0 and rep["scan"]["cpu_2_threads"]["fwd_bwd"] > 0
    # what comes back from the device machine, read again here
    assert json.loads((tmp_path / cuda_check.REPORT).read_text())["device"] == "cpu"
    back = cuda_check.compare_here(tmp_path)
    assert back["here"]["float64_max_abs_diff"] == 0.0
    text = cuda_check.section(back)
    assert text.startswith(cuda_check.BEGIN) and text.endswith(cuda_check.END)
    assert "| the same checkpoint on this machine's CPU build" in text
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n\n<!-- notes: kept across runs -->\n\nkept\n")
    write_section(text, results, cuda_check.BEGIN, cuda_check.END)
    write_section(text, results, cuda_check.BEGIN, cuda_check.END)  # replaced, not appended
    doc = results.read_text()
    assert doc.count(cuda_check.BEGIN) == 1 and doc.endswith("kept\n")


def test_cuda_check_says_when_there_is_no_gpu(tmp_path, monkeypatch):
    import pytest
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="CUDA is not available on this machine"):
        cuda_check.check("cuda", steps=1, out=tmp_path)
