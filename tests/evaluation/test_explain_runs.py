"""A run's faithfulness (evaluation.faithfulness and `dema-lab explain`): episodes played, decisions
explained and perturbed, both groups published and read back by a new process; the causal
horizon's cut window and truncated α against the full model."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch


@pytest.fixture
def tiny_dema(tiny_config):
    """A tiny trained DeMa (2 layers, K 3) in its own store."""
    from dema_lab.store.zarr_store import RunStore
    from dema_lab.training import train

    cfg = tiny_config.replace(
        steps=10, checkpoint_every=10, render_size=0, eval_max_steps=10, eval_targets=[3600.0], n_layer=2
    )
    train(cfg.replace(run_id="fa-dema"), progress=False)
    return cfg.run.store, RunStore(cfg.run.store, mode="a").run("fa-dema")


def test_explain_publishes_relevance_and_faithfulness_read_back_elsewhere(tiny_dema, capsys):
    from dema_lab.cli.main import main

    store, run = tiny_dema
    args = ["explain", "fa-dema", "--episodes", "2", "--steps", "3", "--max-steps", "12", "--store", store]
    assert main(args + ["--methods", "alpha", "attribution", "gradient"]) == 0
    out = capsys.readouterr().out
    assert "positive AUC" in out and "beat" in out and "attribution" in out
    assert run.published("explain") == ["step_00000010"] and run.published("faithfulness") == ["step_00000010"]
    code = (
        "import json, sys; from dema_lab.store.zarr_store import RunStore;"
        "from dema_lab.evaluation.faithfulness import explain_table, faithfulness_table;"
        f"r = RunStore({store!r}).run('fa-dema'); e = explain_table(r); f = faithfulness_table(r, 10);"
        "print(json.dumps({'methods': [str(m) for m in e.explanation.values], 'dims': list(e['relevance'].dims),"
        "'auc': f['auc_mean'].sel(direction='positive').values.tolist(), 'n': int(f.sizes['decision']),"
        "'steps': f['env_step'].values.tolist(), 'verdict': f.attrs['verdict']}))"
    )
    got = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert got["methods"] == ["alpha", "attribution", "gradient", "recency", "random", "occlusion"]
    assert got["dims"] == ["explanation", "decision", "token"]
    assert got["n"] == 6 and all(2 <= s < 12 for s in got["steps"])  # from step K - 1 on
    assert all(np.isfinite(got["auc"])) and "recency" in got["verdict"]
    assert main(args + ["--methods", "lrp"]) == 2


def test_cut_window_and_truncated_alpha_at_k_equal_to_the_window_change_nothing(tiny_dema):
    from dema_lab.evaluation.ablation import load_run_checkpoint
    from dema_lab.evaluation.faithfulness import CutWindow, alpha_truncated, decision_windows, horizon_curve

    _, run = tiny_dema
    ck = load_run_checkpoint(run, None)
    model = ck.model.eval()
    win, where = decision_windows(ck, 1, 4, max_steps=12, run=run)
    K = model.cfg.K
    with torch.no_grad():
        full = model(**win)[:, -1]
        assert torch.equal(CutWindow(model, K)(**win)[:, -1], full)
        with alpha_truncated(model, K):
            assert (model(**win)[:, -1] - full).abs().max() < 1e-5  # the scan against α u + D u
        with alpha_truncated(model, 1):
            one = model(**win)[:, -1]
        # by hand: α kept only within the current step's tokens, layer by layer
        from dema_lab.evaluation.ablation import mixers
        from dema_lab.ssm import apply_attention

        def hook(mixer, args, output):
            inp = mixer.attention_inputs(args[0])
            L = inp["alpha"].shape[-1]
            lag = torch.arange(L)[:, None] - torch.arange(L)[None, :]
            a = inp["alpha"].masked_fill(lag >= model.cfg.tokens_per_step, 0.0)
            return mixer.out_proj(apply_attention(a, inp["u"], inp["D"], inp["z"]).transpose(1, 2))

        hs = [m.register_forward_hook(hook) for m in mixers(model)]
        try:
            assert torch.allclose(model(**win)[:, -1], one, atol=1e-6)
        finally:
            for h in hs:
                h.remove()
        assert not torch.allclose(one, full)
    curve = horizon_curve(ck, episodes=1, seed=0, max_steps=12, run=run, window=win)
    assert list(curve.k.values) == list(range(1, K + 1))
    np.testing.assert_allclose(curve["score_alpha"].sel(k=K), curve["score_cut"].sel(k=K), atol=1e-3)
    assert curve["change_cut"].sel(k=K) == 0
    assert 1 <= float(curve["horizon_cut"]) <= K
