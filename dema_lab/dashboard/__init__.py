"""Panel dashboards over a dema-lab run store (issue 6).

Components (param.Parameterized / pn.viewable.Viewer; display them in a notebook after
``pn.extension()``, or serve them):

    AttentionExplorer(store)     scrub a recorded episode: frame, hidden attention, lag decay, traces
    SequenceComparison(store)    runs that differ in K (and layout, timestep embedding, DeMa vs DT)
    LiveRollout(store)           stream a rollout of a checkpoint in an env, optionally save it
    StudyReport(store)           the paper's tables for a sweep and which of its findings hold
    EmptyStorePage(store)        how to create a run, with a button that trains the demo runs

``serve(store)`` serves the apps on 127.0.0.1; ``panel serve dashboards/attention.py --address
127.0.0.1`` serves the main one (without --address, panel listens on every interface).
"""

from .app import EmptyStorePage, attention_app, compare_app, live_app, serve, study_app
from .compare import SequenceComparison, runs_table
from .data import AttentionReplayer, EpisodeData, RunInfo, StoreIndex
from .explorer import AttentionExplorer
from .live import LiveRollout, RolloutWorker
from .study import StudyReport

__all__ = [
    "AttentionExplorer",
    "AttentionReplayer",
    "EmptyStorePage",
    "EpisodeData",
    "LiveRollout",
    "RolloutWorker",
    "RunInfo",
    "SequenceComparison",
    "StoreIndex",
    "StudyReport",
    "attention_app",
    "compare_app",
    "live_app",
    "runs_table",
    "serve",
    "study_app",
]
