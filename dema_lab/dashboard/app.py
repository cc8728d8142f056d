"""The served apps: a template around the components, the empty-store page, and `serve`.

    attention_app(store)   the explorer, with the sequence-length comparison, live rollouts and the
                           study report as tabs
    compare_app(store)     the comparison alone;   live_app(store)   live rollouts alone
    study_app(store)       the study report alone (the paper's tables for a sweep)
    serve(store)           all four on 127.0.0.1 (``dema-lab serve``)

Store path: ``--args --store PATH`` on ``panel serve``, else $DEMA_LAB_STORE, else "store".
Presentation mode (full screen, larger fonts): ``?presentation=1`` or ``--args --presentation``.
The live page's file field reads the store and ``--args --checkpoint-dir DIR`` (repeatable) only,
files up to ``--max-checkpoint-mb`` (1024); never set from the URL.
The single-component pages take their settings from the URL too: ``/live?env=hopper&mode=rnn&fps=10``.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import panel as pn
import param

from .data import StoreIndex, friendly_error


def pin_local_resources() -> None:
    """Make every component of the current session's page link this server's static files.

    Panel picks a new component's stylesheet URLs from its document's template variable
    `dist_url`, falling back to its CDN (https://cdn.holoviz.org) when the variable is not set yet;
    the server sets it only when it renders the page's HTML. A component created before that by
    another thread (a periodic refresh, a demo's progress, a live rollout) linked the CDN, which
    fails offline (seen intermittently as loading.css requests). Setting it first, as the server
    will, closes that window. Call it at the start of every page builder."""
    from panel.io.resources import LOCAL_DIST

    doc = pn.state.curdoc
    if doc is None or doc.session_context is None:
        return  # a notebook or a script: Panel's own resource handling applies
    rel = pn.state.rel_path
    doc._template_variables.setdefault("dist_url", f"{rel}/{LOCAL_DIST}" if rel else LOCAL_DIST)


PRESENTATION_CSS = """
body, .bk-root, .markdown, .bk-input, .bk-btn, label { font-size: 21px !important; }
#header { min-height: 70px; }
.title { font-size: 2em !important; }
"""


def app_options(argv: list[str] | None = None) -> dict:
    """Store path and presentation flag from `--args` of `panel serve`, the URL and the env; the
    live page's checkpoint directories (`--checkpoint-dir DIR`, repeatable) and file size limit
    (`--max-checkpoint-mb N`) from `--args` only, never from the URL."""
    argv = list(sys.argv[1:] if argv is None else argv)
    store = os.environ.get("DEMA_LAB_STORE", "store")
    presentation = False
    checkpoint_dirs, max_mb = [], None
    for i, a in enumerate(argv):
        if a == "--store" and i + 1 < len(argv):
            store = argv[i + 1]
        elif a.startswith("--store="):
            store = a.split("=", 1)[1]
        elif a == "--presentation":
            presentation = True
        elif a == "--checkpoint-dir" and i + 1 < len(argv):
            checkpoint_dirs.append(argv[i + 1])
        elif a.startswith("--checkpoint-dir="):
            checkpoint_dirs.append(a.split("=", 1)[1])
        elif a == "--max-checkpoint-mb" and i + 1 < len(argv):
            max_mb = argv[i + 1]
        elif a.startswith("--max-checkpoint-mb="):
            max_mb = a.split("=", 1)[1]
    live = {"checkpoint_dirs": checkpoint_dirs}
    if max_mb is not None:
        live["max_checkpoint_bytes"] = checkpoint_limit(max_mb)
    try:
        arg = pn.state.session_args.get("presentation") if pn.state.curdoc else None
        if arg:
            presentation = arg[0].decode().lower() not in ("0", "false", "no", "")
        s = pn.state.session_args.get("store") if pn.state.curdoc else None
        if s and _allow_store_arg():
            store = s[0].decode()
    except Exception:  # noqa: BLE001 - not in a server session
        pass
    return {"store": store, "presentation": presentation, "live": live}


def checkpoint_limit(megabytes) -> int:
    """--max-checkpoint-mb as bytes; ValueError naming the flag for anything but a positive number."""
    try:
        mb = float(megabytes)
    except (TypeError, ValueError):
        mb = float("nan")
    if not mb > 0:
        raise ValueError(f"--max-checkpoint-mb must be a positive number of megabytes, not {megabytes!r}")
    return int(mb * 2**20)


# never read from or written to a URL
URL_SKIP = ("name", "status", "message", "revision", "rollout", "checkpoint_file")


def _url_args() -> dict:
    try:
        return dict(pn.state.session_args) if pn.state.curdoc else {}
    except Exception:  # noqa: BLE001 - not in a server session
        return {}


def _from_url(p: param.Parameter, name: str, text: str):
    """A URL's text as the value of parameter `p` (None: a kind of parameter URLs do not set)."""
    try:
        if isinstance(p, param.Boolean):
            return text.lower() not in ("0", "false", "no", "off", "")
        if isinstance(p, param.Integer):
            return int(text)
        if isinstance(p, param.Number):
            return float(text)
    except ValueError:
        raise ValueError(f"URL setting {name}={text!r} is not a number") from None
    if isinstance(p, param.Selector):
        names = getattr(p, "names", None) or {}
        for o in p.objects:  # choices that are numbers: a checkpoint, a layer
            if str(o) == text:
                return o
        return names.get(text, text)
    if isinstance(p, param.String):
        return text
    return None


def _to_url(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def url_settings(cls: type[param.Parameterized]) -> dict:
    """A component's settings given in the page's URL (`/live?env=hopper&fps=10&mode=rnn`), so a
    demo can be bookmarked: numbers, integers, booleans, choices and text, by parameter name."""
    out = {}
    for name, values in _url_args().items():
        p = cls.param.objects().get(name)
        if p is None or name in URL_SKIP or not values:
            continue
        value = _from_url(p, name, values[0].decode())
        if value is not None:
            out[name] = value  # out-of-range values fail in the component, naming the parameter
    return out


def url_parameters(obj: param.Parameterized) -> list[str]:
    """The parameters of a view that its URL carries, in declaration order (which is the order
    in which they depend on each other: run before checkpoint before episode before step)."""
    return [
        n
        for n, p in obj.param.objects("existing").items()
        if n not in URL_SKIP
        and (p.precedence is None or p.precedence >= 0)
        and isinstance(p, (param.Selector, param.Number, param.Boolean, param.String))
    ]


def sync_url(obj: param.Parameterized, apply: bool = False) -> list[str]:
    """Keep the page's URL following the view's state, so that any view can be bookmarked or
    shared (presentation=1 and other query arguments are kept). With `apply`, first set the
    URL's settings on the view one by one in dependency order (each choice list is filled by
    the setting before it). Returns the settings that could not be applied, each with why."""
    names = url_parameters(obj)
    problems = []
    if apply:
        args = _url_args()
        for name in names:
            if name not in args or not args[name]:
                continue
            text = args[name][0].decode()
            try:
                value = _from_url(obj.param[name], name, text)
                if value is not None and value != getattr(obj, name):
                    setattr(obj, name, value)
            except Exception as e:  # noqa: BLE001 - a stale or mistyped link: say so, keep the view
                problems.append(f"URL setting {name}={text!r} was not applied: {friendly_error(e)}")
    loc = pn.state.location if pn.state.curdoc else None
    if loc is None:
        return problems

    def push(*events):
        loc.update_query(**{e.name: _to_url(e.new) for e in events if e.new is not None})

    def push_all():
        loc.update_query(**{n: _to_url(getattr(obj, n)) for n in names if getattr(obj, n) is not None})

    obj.param.watch(push, names)
    pn.state.onload(push_all)  # once the browser has sent its own URL: the whole state
    return problems


def state_of(view) -> param.Parameterized:
    """The param-only state a view renders (its `state`), or the view itself when it has none."""
    state = getattr(view, "state", None)
    return state if isinstance(state, param.Parameterized) else view


def _allow_store_arg() -> bool:
    return os.environ.get("DEMA_LAB_ALLOW_STORE_ARG") == "1"


def stop_with_parent():
    """A preexec_fn for subprocess.Popen that has Linux send the child SIGTERM when its parent
    dies, however it dies (`panel serve` stopped by SIGTERM runs no atexit hooks, and a child
    that is evaluating prints nothing for minutes, so a broken pipe would not stop it either).
    None where prctl is missing."""
    try:
        import ctypes
        import signal

        prctl, sigterm = ctypes.CDLL(None, use_errno=True).prctl, int(signal.SIGTERM)  # resolved before the fork
        return lambda: prctl(1, sigterm)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return None


# ---------------------------------------------------------------------- the demo job
class DemoJob(param.Parameterized):
    """The demo runs being trained into a store, shared by every session of the process."""

    message = param.String(default="")
    fraction = param.Number(default=0.0)
    running = param.Boolean(default=False)
    error = param.String(default="")
    finished = param.Boolean(default=False)

    _jobs: dict = {}
    _lock = threading.Lock()

    @classmethod
    def for_store(cls, path: str) -> DemoJob:
        key = os.path.abspath(path) if "://" not in path else path
        with cls._lock:
            job = cls._jobs.get(key)
            if job is None:
                job = cls._jobs[key] = cls(path=path)
            return job

    def __init__(self, path: str, **params):
        super().__init__(**params)
        self.path = path
        self._thread = None

    def start(self):
        with self._lock:
            if self.running:
                return
            self.running, self.error, self.finished = True, "", False
            self.message, self.fraction = "starting the demo runs", 0.0
            self._thread = threading.Thread(target=self._run, daemon=True, name="dema-demo")
            self._thread.start()

    def _progress(self, message: str, fraction: float):
        self.message, self.fraction = message, float(fraction)

    def _run(self):
        """Train in a child process (`dema-lab demo --no-serve`): the server keeps its GIL and
        its single-threaded acting for the live rollouts, and a crash cannot take it down.
        Progress comes from the child's "[demo NN%] message" lines."""
        import atexit
        import re
        import subprocess

        cmd = [sys.executable, "-m", "dema_lab.cli", "demo", "--no-serve", "--store", self.path]
        tail = []
        try:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                env={**os.environ, "TQDM_DISABLE": "1"},
                preexec_fn=stop_with_parent(),
            )
            atexit.register(proc.terminate)  # the server stopping stops the training
            for line in proc.stdout:
                tail = (tail + [line.rstrip()])[-5:]
                m = re.search(r"\[demo\s+(\d+)%\] (.*)", line.split("\r")[-1].strip())
                if m:
                    self._progress(m.group(2), int(m.group(1)) / 100)
            if proc.wait() != 0:
                self.error = "the demo runs failed: " + " / ".join(t for t in tail if t)
            else:
                self.finished = True
        except Exception as e:  # noqa: BLE001 - shown on the page
            self.error = friendly_error(e)
        finally:
            self.running = False

    def detail(self) -> tuple[float, str, int]:
        """Finer progress than the callback gives: the fraction of the demo runs' training steps
        done, a line per run, and how many runs the store holds (any, not only the demo's)."""
        from ..demo import demo_runs

        try:
            idx = StoreIndex(self.path)
            ids = idx.run_ids()
            done, total, parts = 0, 0, []
            for cfg in demo_runs(self.path):
                total += cfg.steps
                if cfg.run_id in ids:
                    info = idx.info(cfg.run_id)
                    done += min(info.steps_done, cfg.steps)
                    parts.append(f"{cfg.run_id}: {info.steps_done}/{cfg.steps} steps ({info.status})")
            return done / max(total, 1), "; ".join(parts), len(ids)
        except Exception:  # noqa: BLE001 - the store may be being created
            return self.fraction, "", 0


class DemoProgress(pn.viewable.Viewer):
    """The demo job's progress bar and status line, updated every second while it runs;
    on_update(job, runs) is called after each update, with the number of runs in the store."""

    def __init__(self, job: DemoJob, on_update=None, **params):
        super().__init__(**params)
        self.job, self.on_update = job, on_update
        self._bar = pn.indicators.Progress(
            value=0,
            max=1000,
            sizing_mode="stretch_width",
            visible=False,
            bar_color="primary",
            css_classes=["dema-demo-progress"],
        )
        self._status = pn.pane.Markdown("", css_classes=["dema-demo-status"], sizing_mode="stretch_width")
        self._cb = None

    def watch(self):
        self._bar.visible = True
        if self._cb is None and self.job.running:
            self._cb = pn.state.add_periodic_callback(self.update, period=1000)
        self.update()

    def update(self):
        job = self.job
        fine, detail, runs = job.detail()
        frac = max(job.fraction, fine)
        self._bar.value = int(1000 * min(1.0, frac))
        text = f"**{100 * frac:.0f}%** · {job.message}"
        if detail:
            text += f"  \n{detail}"
        if job.error:
            text = f"The demo failed: {job.error}"
        elif job.finished:
            text = "The demo runs are ready."
        self._status.object = text
        if self.on_update is not None:
            self.on_update(job, runs)
        if not job.running:
            self.stop()

    def stop(self):
        """Stop updating (the job goes on)."""
        if self._cb is not None:
            self._cb.stop()
            self._cb = None

    def __panel__(self):
        return pn.Column(self._bar, self._status, sizing_mode="stretch_width")


class EmptyStorePage(pn.viewable.Viewer):
    """What an empty store shows: how to create a run, and a button that trains the demo runs."""

    def __init__(self, store: str, on_ready=None, **params):
        super().__init__(**params)
        self.store = store
        self.job = DemoJob.for_store(store)
        self.on_ready = on_ready
        self._button = pn.widgets.Button(
            label="Start the demo run", color="primary", css_classes=["dema-demo-button"], width=260, height=48
        )
        self._button.on_click(lambda *_: self.start())
        self._progress = DemoProgress(self.job, on_update=self._updated)
        if self.job.running:
            self._watch()

    def start(self):
        self.job.start()
        self._watch()

    def _watch(self):
        self._button.disabled = True
        self._button.label = "Demo running…"
        self._progress.watch()

    def _updated(self, job: DemoJob, runs: int):
        if job.error:
            self._button.disabled, self._button.label = False, "Try again"
        if runs:
            self._progress.stop()  # the explorer, taking over, shows its own
            if self.on_ready is not None:
                self.on_ready()

    def __panel__(self):
        path = os.path.abspath(self.store) if "://" not in self.store else self.store
        text = f"""
## This store has no runs yet

The dashboards read runs from the store at `{path}`. Create one:

* **Here:** start the demo run. It builds the default dataset (hopper-medium), trains a small
  Decision Mamba (K = 10, 2000 steps) and two shorter runs with K = 5 and K = 20, evaluating and
  recording episodes with their hidden attention. It takes several minutes on two CPU cores; the
  explorer opens as soon as the first run appears.
* **From a terminal:** `make demo`, or `dema-lab train --store {self.store} --dataset hopper-medium --K 20`
  (see `dema-lab train --help`), then reload this page.
* **Another store:** `panel serve dashboards/attention.py --address 127.0.0.1 --args --store PATH`, or set `DEMA_LAB_STORE`.
"""
        return pn.Column(
            pn.pane.Markdown(text, sizing_mode="stretch_width", css_classes=["dema-empty-store"]),
            self._button,
            self._progress,
            sizing_mode="stretch_width",
            max_width=1000,
        )


# ---------------------------------------------------------------------- templates
def _template(title: str, main, sidebar=None, presentation: bool = False):
    # Bootstrap: its resources are bundled with Panel (the Fast design always pulls a web font),
    # so the pages work offline
    tmpl = pn.template.BootstrapTemplate(
        title=title,
        sidebar=[sidebar] if sidebar is not None else [],
        main=[main],
        header_background="#1f3b57",
        collapsed_sidebar=False,
        sidebar_width=310,
    )
    if presentation:
        tmpl.config.raw_css.append(PRESENTATION_CSS)
        tmpl.sidebar_width = 380
    return tmpl


def _guarded(build, title: str):
    """Build a page; a failure becomes a message, never a traceback."""
    try:
        return build()
    except Exception as e:  # noqa: BLE001
        return pn.pane.Alert(
            f"**{title} cannot be shown:** {friendly_error(e)}", alert_type="danger", sizing_mode="stretch_width"
        )


def attention_app(store: str | None = None, presentation: bool | None = None, live: dict | None = None):
    """The main app: the attention explorer, with comparison and live rollouts as tabs; the
    empty-store page (and demo button) until the store has a run. `live`: LiveRollout's
    checkpoint_dirs and max_checkpoint_bytes (default: from `--args`)."""
    pin_local_resources()
    opts = app_options()
    store = store or opts["store"]
    presentation = opts["presentation"] if presentation is None else presentation
    live = opts["live"] if live is None else live
    main = pn.Column(sizing_mode="stretch_width")
    sidebar = pn.Column(sizing_mode="stretch_width")
    tmpl = _template("dema-lab · hidden attention explorer", main, sidebar, presentation)
    demo = DemoJob.for_store(store)
    state = {"shown": None}

    def show_explorer():
        if state["shown"] == "explorer":
            return
        from .compare import SequenceComparison
        from .explorer import AttentionExplorer

        index = StoreIndex(store)
        explorer = AttentionExplorer(index, presentation=presentation)
        problems = sync_url(explorer.state, apply=True)  # the URL follows the state's parameters
        if problems:
            explorer.message = "\n\n".join([explorer.message, *problems]).strip()
        state["shown"] = "explorer"
        state["explorer"] = explorer
        tabs = pn.Tabs(
            ("Attention explorer", explorer.views()),
            (
                "Sequence length",
                _guarded(lambda: SequenceComparison(index, presentation=presentation).views(), "The comparison"),
            ),
            ("Live rollout", _guarded(lambda: _live_tab(index, presentation, live), "Live rollouts")),
            ("Study report", _guarded(lambda: _study_tab(index, presentation), "The study report")),
            dynamic=True,
            sizing_mode="stretch_width",
        )
        controls = explorer.controls()
        tabs.param.watch(lambda e: setattr(controls, "visible", e.new == 0), "active")
        sidebar[:] = [controls]
        main[:] = [tabs]
        if demo.running:  # the demo goes on training: its progress above the tabs
            progress = DemoProgress(demo)
            main.insert(0, progress)
            progress.watch()
            _keep_refreshing(explorer, demo)

    def show_empty():
        state["shown"] = "empty"
        sidebar[:] = [pn.pane.Markdown("No runs yet.")]
        main[:] = [EmptyStorePage(store, on_ready=show_explorer)]

    try:
        empty = StoreIndex(store).is_empty()
        if empty:
            show_empty()
        else:
            show_explorer()
    except Exception as e:  # noqa: BLE001 - a store that is not one, unreadable, ...
        main[:] = [
            pn.pane.Alert(
                f"**The store cannot be opened:** {friendly_error(e)}", alert_type="danger", sizing_mode="stretch_width"
            )
        ]
    return tmpl


def _live_tab(index, presentation, options: dict):
    from .live import LiveRollout

    live = LiveRollout(index, presentation=presentation, **options)
    return pn.Row(pn.Column(live.controls(), width=300), live.views(), sizing_mode="stretch_width")


def _study_tab(index, presentation):
    from .study import StudyReport

    return StudyReport(index, presentation=presentation).__panel__()


def _keep_refreshing(explorer, demo: DemoJob):
    """While the demo trains, pick up its new runs and episodes every few seconds."""

    def tick():
        explorer.refresh()
        if not demo.running and cb is not None:
            cb.stop()

    cb = pn.state.add_periodic_callback(tick, period=5000)


def _component_app(component: str, title: str, failure: str, store: str | None, presentation: bool | None, **options):
    """A page of one component (controls in the sidebar, views in the main area); a component that
    cannot be built becomes a message naming why. `options` go to the component."""
    from .compare import SequenceComparison
    from .live import LiveRollout
    from .study import StudyReport

    pin_local_resources()
    cls = {"compare": SequenceComparison, "live": LiveRollout, "study": StudyReport}[component]
    opts = app_options()
    store = store or opts["store"]
    presentation = opts["presentation"] if presentation is None else presentation
    try:
        view = cls(store, presentation=presentation, **options, **url_settings(getattr(cls, "state_class", cls)))
        controls, views = view.controls(), view.views()
        sync_url(state_of(view))
    except Exception as e:  # noqa: BLE001
        controls, views = None, pn.pane.Alert(f"**{failure}:** {friendly_error(e)}", alert_type="danger")
    return _template(f"dema-lab · {title}", views, controls, presentation)


def compare_app(store: str | None = None, presentation: bool | None = None):
    return _component_app("compare", "sequence length", "The store cannot be read", store, presentation)


def live_app(store: str | None = None, presentation: bool | None = None, live: dict | None = None):
    """The live rollout page; `live`: LiveRollout's checkpoint_dirs and max_checkpoint_bytes (default:
    from `--args`)."""
    live = app_options()["live"] if live is None else live
    return _component_app("live", "live rollout", "Live rollouts cannot start", store, presentation, **live)


def study_app(store: str | None = None, presentation: bool | None = None):
    return _component_app("study", "study report", "The study report cannot be built", store, presentation)


def serve(
    store: str = "store",
    port: int = 5006,
    address: str = "127.0.0.1",
    show: bool = False,
    presentation: bool = False,
    checkpoint_dirs=(),
    max_checkpoint_bytes: int | None = None,
    **kwargs,
):
    """Serve the apps (/attention, /compare, /live, /study) on `address` (127.0.0.1 by default).
    The live page reads checkpoint files only under the store and `checkpoint_dirs`, at most
    `max_checkpoint_bytes` each (default 1 GiB). Blocks until interrupted; kwargs go to pn.serve
    (e.g. threaded=True, websocket_origin). ValueError when the port cannot be listened on."""
    check_port(address, port)
    live = {"checkpoint_dirs": list(checkpoint_dirs)}
    if max_checkpoint_bytes is not None:
        live["max_checkpoint_bytes"] = int(max_checkpoint_bytes)
    presentation = presentation or None  # --presentation forces it on, else ?presentation=1 decides
    apps = {
        "attention": lambda: attention_app(store, presentation, live),
        "compare": lambda: compare_app(store, presentation),
        "live": lambda: live_app(store, presentation, live),
        "study": lambda: study_app(store, presentation),
    }
    kwargs.setdefault("websocket_origin", [f"{address}:{port}", f"localhost:{port}"])
    kwargs.setdefault("index", str(Path(__file__).with_name("index.html")))  # offline, unlike Panel's
    try:
        return pn.serve(apps, port=port, address=address, show=show, title="dema-lab", **kwargs)
    except OSError as e:  # taken between the check and the bind
        raise ValueError(_port_message(address, port, e)) from None


def _port_message(address: str, port: int, e: OSError) -> str:
    import errno

    if e.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {address} is in use (another dema-lab serve?): stop what listens there, "
            f"or pick another port with --port"
        )
    return f"cannot listen on {address}:{port} ({e.strerror or e}): give a local address with --address"


def check_port(address: str, port) -> None:
    """ValueError with one line when the dashboard cannot listen on address:port: a port outside
    1-65535, one in use, or an address this machine does not have."""
    import socket

    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range: give --port between 1 and 65535 (default 5006)")
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        raise ValueError(_port_message(address, port, e)) from None
    for family, kind, proto, _, addr in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Tornado binds
                s.bind(addr)
        except OSError as e:
            import errno

            if e.errno == errno.EADDRNOTAVAIL and addr[0] == "::1":  # no IPv6 here: Tornado skips it too
                continue
            raise ValueError(_port_message(address, port, e)) from None
