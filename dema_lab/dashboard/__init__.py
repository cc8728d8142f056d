"""Panel dashboards over a dema-lab run store: one folder per page, common/ for what they share.

The top layer, beside cli: it may import every package below it.

Components (param.Parameterized / pn.viewable.Viewer; display them in a notebook after
``pn.extension()``, or serve them):

    AttentionExplorer(store)     scrub a recorded episode: frame, hidden attention, lag decay, traces
    ExplorerState(store)         its state alone (param only: run, episode, step, ...; .attention,
                                 .window_labels, .frame), for notebooks and tests without rendering
    SequenceComparison(store)    runs that differ in K (and layout, timestep embedding, DeMa vs DT)
    LiveRollout(store)           stream a rollout of a checkpoint in an env, optionally save it
    LiveState(store)             its state alone (the checkpoint, env, target, the playing worker)
    StudyReport(store)           the paper's tables for a sweep and which of its findings hold
    EmptyStorePage(store)        how to create a run, with a button that trains the demo runs

``serve(store)`` serves the apps on 127.0.0.1; ``panel serve dashboards/attention.py --address
127.0.0.1`` serves the main one (without --address, panel listens on every interface).
"""

import importlib

# where each name lives; imported when first used, so that `from dema_lab.dashboard.explorer.state
# import ExplorerState` (or common.data, live.state) imports neither Panel nor HoloViews
_WHERE = {
    "EmptyStorePage": "empty_store.page",
    "attention_app": "app",
    "compare_app": "app",
    "live_app": "app",
    "serve": "server",
    "study_app": "app",
    "SequenceComparison": "compare.view",
    "runs_table": "compare.view",
    "AttentionReplayer": "common.data",
    "EpisodeData": "common.data",
    "RunInfo": "common.data",
    "StoreIndex": "common.data",
    "AttentionExplorer": "explorer.view",
    "ExplorerState": "explorer.state",
    "LiveRollout": "live.view",
    "LiveState": "live.state",
    "RolloutWorker": "live.state",
    "StudyReport": "study.view",
}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "AttentionExplorer",
    "AttentionReplayer",
    "EmptyStorePage",
    "EpisodeData",
    "ExplorerState",
    "LiveRollout",
    "LiveState",
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
