"""Faithfulness of explanations (analysis.faithfulness): perturbation curves against re-runs of the
model with the chosen tokens zeroed by hand, AUCs against the trapezoid rule, the statistics
against their definitions, the window cut and the causal horizon."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.explain import tiny, window

from dema_lab.analysis.faithfulness import (
    auc,
    causal_horizon,
    cut_window,
    faithfulness,
    perturbation_curves,
    verdict,
    window_change,
)


def rerun_without(model, win, zeroed):
    """The current decision with the tokens in `zeroed` (one list of indices per window) given
    zero embeddings by a hook on the embedding, window by window."""
    outs = []
    for i, idx in enumerate(zeroed):
        one = {k: v[i : i + 1] for k, v in win.items()}
        hook = model.embed.register_forward_hook(lambda _m, _a, out, idx=idx: out.index_fill(1, torch.tensor(idx), 0.0))
        try:
            with torch.no_grad():
                outs.append(model(**one)[0, -1])
        finally:
            hook.remove()
    return torch.stack(outs)


@pytest.mark.parametrize("n_actions", [0, 4])
def test_perturbation_curves_are_reruns_with_the_top_or_bottom_tokens_zeroed(n_actions):
    model = tiny(n_actions=n_actions)
    win = window(model, b=3)
    q = model.cfg.window_tokens(5) - 1  # the current state token (B3LD RSA)
    rel = np.random.default_rng(0).random((3, q + 1))
    fractions = (0.25, 0.5, 1.0)
    curves = perturbation_curves(model, win, {"m": rel}, fractions)
    assert curves["change"].shape == (1, 2, 3, 3)
    with torch.no_grad():
        before = model(**win)[:, -1]
    for f, p in enumerate(fractions):
        k = max(1, round(p * q))
        order = np.argsort(-rel[:, :q], axis=-1)
        for d, chosen in enumerate((order[:, :k], order[:, q - k :])):
            after = rerun_without(model, win, [list(c) for c in chosen])
            if n_actions:
                a = before.argmax(-1, keepdim=True)
                expect = F.softmax(before, -1).gather(-1, a) - F.softmax(after, -1).gather(-1, a)
                lp, lq = F.log_softmax(before, -1), F.log_softmax(after, -1)
                kl = (lp.exp() * (lp - lq)).sum(-1)
                assert np.allclose(curves["kl"][0, d, f], kl.numpy(), atol=1e-10)
                expect = expect[:, 0]
            else:
                expect = (after - before).norm(dim=-1)
            assert np.allclose(curves["change"][0, d, f], expect.numpy(), atol=1e-10)
    # at p = 1 both directions replace every earlier token
    assert np.allclose(curves["change"][0, 0, -1], curves["change"][0, 1, -1])


def test_auc_is_the_trapezoid_from_zero_over_the_largest_fraction():
    fractions = (0.1, 0.5, 0.9)
    curve = np.array([[2 * 0.1], [2 * 0.5], [2 * 0.9]])  # change = 2 p, one decision
    assert auc(curve, fractions)[0] == pytest.approx(2 * 0.9 / 2)  # the mean of 2p over [0, 0.9]
    step = np.array([[1.0], [1.0], [1.0]])
    assert auc(step, fractions)[0] == pytest.approx((0.05 + 0.8) / 0.9)


def test_faithfulness_statistics_follow_their_definitions():
    model = tiny()
    win = window(model, b=6, seed=2)
    ds = faithfulness(model, win, methods=["alpha", "gradient", "occlusion"], fractions=(0.2, 0.6, 1.0))
    assert list(ds.explanation.values) == ["alpha", "gradient", "occlusion", "recency", "random"]
    assert ds["change"].dims == ("explanation", "direction", "fraction", "decision")
    a = ds["auc"].values
    assert np.allclose(a, auc(ds["change"].values, (0.2, 0.6, 1.0)))
    assert np.allclose(ds["auc_mean"].values, a.mean(-1))
    assert (ds["auc_low"] <= ds["auc_mean"]).all() and (ds["auc_mean"] <= ds["auc_high"]).all()
    # occlusion agrees with itself; the others by the definition of Spearman's rho
    occ = ds.sel(explanation="occlusion")
    assert np.allclose(occ["spearman"].values, 1.0) and occ["top_agreement"] == 1.0
    from scipy.stats import spearmanr

    rel = ds["relevance"].values[:, :, :-1]
    expect = [spearmanr(rel[0, i], rel[2, i]).statistic for i in range(6)]
    assert np.allclose(ds["spearman"].sel(explanation="alpha").values, expect)
    assert ds["top_agreement"].sel(explanation="alpha") == np.mean(rel[0].argmax(-1) == rel[2].argmax(-1))
    # the paired difference against recency, and `beats` from its interval
    diff = a[0, 0] - a[3, 0]
    assert ds["versus_mean"].sel(explanation="alpha", baseline="recency") == pytest.approx(diff.mean())
    assert bool(ds["beats"].sel(explanation="alpha", baseline="recency")) == (
        float(ds["versus_low"].sel(explanation="alpha", baseline="recency")) > 0
    )
    assert ds["relevance"].sel(explanation="occlusion").shape == (6, rel.shape[-1] + 1)
    text = verdict(ds)
    assert text.splitlines()[0].startswith(("beat recency:", "no method beats recency"))
    assert "alpha: " in text and "recency:" not in text.splitlines()[-1][:8]
    with pytest.raises(ValueError, match="do not apply to this model"):
        faithfulness(tiny(arch="dt"), window(tiny(arch="dt")), methods=["alpha"])


def test_cut_window_is_the_last_k_steps_with_the_action_before_them():
    model = tiny(order="RAS")
    win = window(model)
    with torch.no_grad():
        full = model(**win)[:, -1]
        assert torch.equal(model(**cut_window(win, 5))[:, -1], full)
        cut = cut_window(win, 2)
        assert cut["states"].shape[1] == 2 and torch.equal(cut["prev_action"], win["actions"][:, 2])
        by_hand = model(
            win["states"][:, 3:], win["actions"][:, 3:], win["returns_to_go"][:, 3:], win["timesteps"][:, 3:],
            prev_action=win["actions"][:, 2],
        )[:, -1]  # fmt: skip
        assert torch.equal(model(**cut)[:, -1], by_hand)
    change = window_change(model, win, [1, 2, 5])
    assert change[-1] == 0 and change[0] > 0
    assert change[1] == pytest.approx(float((by_hand - full).norm(dim=-1).mean()))
    with pytest.raises(ValueError, match="k must be between 1 and the window's 5 steps"):
        cut_window(win, 6)


def test_causal_horizon_is_the_first_k_inside_the_full_windows_interval():
    full = np.array([50.0, 52.0, 54.0])  # mean 52, t interval [47.0, 57.0]
    scores = np.array([[10.0, 12.0], [40.0, 41.0], [49.0, 50.0], [60.0, 60.0]])
    h = causal_horizon(scores, [1, 2, 3, 4], full)
    assert h["horizon"] == 3 and h["full_low"] == pytest.approx(52 - 4.302653 * 2 / np.sqrt(3), rel=1e-5)
    assert np.isnan(causal_horizon(scores[:2], [1, 2], full)["horizon"])
    assert causal_horizon(scores, [1, 2, 3, 4], [41.0])["horizon"] == 3  # one episode: reach its score


def test_recency_ranks_by_lag_when_no_decay_rate_can_be_fitted(monkeypatch):
    import dema_lab.analysis.faithfulness as faith_module

    model = tiny()
    win = window(model, b=3)
    real = faith_module.relevance

    def no_fit(model, window, method, **options):  # as on a model whose attention does not fall with lag
        if method == "recency" and "rate" not in options:
            raise ValueError("recency: the attention mass does not fall with lag")
        return real(model, window, method, **options)

    monkeypatch.setattr(faith_module, "relevance", no_fit)
    ds = faithfulness(model, win, methods=["gradient"], fractions=(0.5,))
    rec = ds["relevance"].sel(explanation="recency").values
    assert np.all(np.diff(rec, axis=-1) > 0)  # the latest token first
    assert "not fitted" in ds.attrs["options_recency"]


@pytest.mark.parametrize("arch", ["dema", "dt"])
def test_an_atari_model_is_explained_and_perturbed_with_the_mean_baseline(arch):
    """Frames (uint8 (4, 84, 84)), discrete actions, token order ARS: every method runs, the mean
    baseline embeds the mean frame and the action frequencies, the curves are probability drops."""
    from dema_lab.models import ModelConfig, build_model

    torch.manual_seed(0)
    obs = (4, 84, 84)
    cfg = ModelConfig(
        arch=arch, state_dim=4 * 84 * 84, act_dim=1, obs_shape=obs, n_actions=4, K=3, d_model=16, d_state=4,
        n_layer=2, token_order="ARS" if arch == "dema" else "RSA", embed_norm="none",
    )  # fmt: skip
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    win = {
        "states": torch.randint(0, 256, (3, 3, *obs), generator=g, dtype=torch.uint8),
        "actions": torch.randint(0, 4, (3, 3, 1), generator=g).float(),
        "returns_to_go": torch.rand(3, 3, 1, generator=g),
        "timesteps": torch.arange(3)[None].repeat(3, 1),
        "prev_action": torch.zeros(3, 1),
    }
    means = {
        "state": np.full(obs, 90.0),
        "action": np.array([0.1, 0.2, 0.3, 0.4]),
        "return_to_go": np.array([0.5]),
    }
    ds = faithfulness(model, win, fractions=(0.5, 1.0), baseline="mean", means=means)
    assert np.isfinite(ds["auc"].values).all() and "kl" in ds
    assert ds.attrs["measure"] == "drop in the chosen action's probability"
    assert (ds["kl"].values >= -1e-12).all()


@pytest.mark.parametrize("arch", ["lstm", "gru", "mlp"])
def test_a_model_without_attention_is_judged_by_the_methods_that_read_none(arch):
    from dema_lab.analysis.faithfulness import methods_for

    model = tiny(arch=arch)
    assert methods_for(model) == ("gradient", "occlusion", "recency", "random")
    ds = faithfulness(model, window(model), fractions=(0.5, 1.0))
    assert list(ds.explanation.values) == ["gradient", "occlusion", "recency", "random"]
    assert np.isfinite(ds["auc"].values).all() and list(ds.direction.values) == ["positive", "negative"]
    with pytest.raises(ValueError, match="do not apply to this model"):
        faithfulness(model, window(model), methods=["attribution"])
