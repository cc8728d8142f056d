"""Analysis of hidden attention and of scores: pure functions of arrays, models and xarray data.

tokens: which token is which (labels, right alignment); decay: attention by lag and its
exponential fit (dema-lab's method); paper: the paper's attention display; cue: where a memory
task's cue sits in the window and the decision's attention on it; explain: one decision's relevance
by method and the Mamba mixer's whole implicit attention; faithfulness: perturbation tests of those
explanations against recency and random, and the causal horizon; scoring: last/best
scores and the statistics behind verdicts; runs: the runs of a store as one table (open_store).
May import common, ssm, models, envs, data and store; it writes nothing (evaluation/ and
training/ store what it computes).
"""

from dema_lab.analysis.decay import (
    DEMA_LAB_METHOD,
    FIT_NAMES,
    attention_by_lag,
    by_key_kind,
    decay_statistics,
    fit_decay,
    lag_profile,
)
from dema_lab.analysis.explain import relevance, unified_attention
from dema_lab.analysis.paper import PAPER_METHOD, PAPER_START, last_token_attention, paper_selection, paper_statistics
from dema_lab.analysis.runs import open_store
from dema_lab.analysis.tokens import current_token, opening_step, query_kinds, right_align, token_coords, token_labels

__all__ = [
    "DEMA_LAB_METHOD",
    "FIT_NAMES",
    "PAPER_METHOD",
    "PAPER_START",
    "attention_by_lag",
    "by_key_kind",
    "current_token",
    "decay_statistics",
    "fit_decay",
    "lag_profile",
    "last_token_attention",
    "open_store",
    "opening_step",
    "paper_selection",
    "paper_statistics",
    "query_kinds",
    "relevance",
    "right_align",
    "token_coords",
    "token_labels",
    "unified_attention",
]
