"""The run store: many runs in one Zarr v3 hierarchy, read through xarray.

    <store>/                         attrs: dema_lab = {kind: "store", version}
      runs/<run_id>/                 attrs: dema_lab = {kind: "run"}, config, provenance, status,
                                            published = {kind: [names]}
        train/<segment>              training metrics by step
        eval/<name>                  returns by (mode, target, episode) for one checkpoint
        rollout/<name>               one logged episode: frames, actions, rewards, attention by step
        decay/<name>                 attention mass by lag and its exponential fit, per layer
        paper_attention/<name>       the paper's display: the current token's mean |α| by decision
                                     step and lag, its means and exponential fits (per key kind too)
        ablation/<name>              scores under one ablation (dema_lab.evaluation.ablation: method, layers, seed)
        checkpoint/<name>            a safetensors checkpoint as a uint8 array
        resume/<name>                optimiser and RNG state to continue a killed run

Publishing protocol (readers never see partial data): a writer writes a whole group under a
fresh name, then appends the name to its run's `published` attribute. The attribute lives in
the run group's zarr.json, which the store replaces atomically (write to a temp file, rename).
Readers open only published groups. Each run has a single writer, so there is no
read-modify-write race on that attribute; runs never touch each other's groups.

Rewriting a published name (merged ablations, an evaluation repeated after a resume) never
touches the group readers are using: each name has a ring of slots (<name>, <name>.slot1,
<name>.slot2); the new version is written whole into the next slot, and the run's `slots`
attribute switches to it in the same atomic write that publishes it. A reader that looked up
the old slot can still read it until two more versions have been written.

Deleting a run first marks it (status "deleting", nothing published) in one write of its zarr.json,
then removes its files, that zarr.json last: a killed delete leaves a listed run that a second
delete finishes. The runs are listed from the `runs` group, or from the run directories on disk
when its zarr.json is missing (rewritten by a writable store).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from dema_lab.store.errors import EmptyStoreError, IntegrityError, StoreError, StoreFullError
from dema_lab.store.schema import (
    KINDS,
    RUN_ID,
    STORE_VERSION,
    checkpoint_name,
    step_of,
)

DEFAULT_STORE = os.environ.get("DEMA_LAB_STORE", "store")
SLOTS = 3  # versions of a rewritten name kept on disk (see the publishing protocol)


def check_store(path, writable: bool = False) -> None:
    """Raise StoreError unless `path` is a dema-lab store or nothing yet (missing, or an empty
    directory: one is created there on the first write), and with `writable`, one this user can
    write. For commands that write or serve later."""
    try:
        RunStore(path, mode="r")
    except EmptyStoreError:
        pass
    if writable and not _is_url(str(path)):
        _check_writable(Path(str(path)).expanduser())


def _is_url(path: str) -> bool:
    return "://" in path


def _no_listings_cache(url: str) -> None:
    """Other processes add runs and groups to a store: listings of a remote store are never
    cached (fsspec's default for s3fs, gcsfs, ... keeps a listing for the filesystem's lifetime, so
    a dashboard would never see a new run). Unless the user set it (--storage-option)."""
    import fsspec.config

    fsspec.config.conf.setdefault(url.split("://", 1)[0], {}).setdefault("use_listings_cache", False)


def _url_is_empty(url: str) -> bool:
    """Whether an fsspec URL holds nothing yet (a new prefix, an empty bucket): a store is created
    there on the first write. Unreachable or refused URLs raise StoreError, naming what to check."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
        root = root.rstrip("/")
        if fs.exists(f"{root}/zarr.json"):
            return False
        return not fs.exists(root) or not fs.ls(root, detail=False)
    except Exception as e:  # noqa: BLE001 - every filesystem has its own errors
        raise StoreError(
            f"cannot read {url} ({type(e).__name__}: {e}); check the URL, the credentials and the "
            f"endpoint (--storage-option KEY=VALUE, or the environment as the filesystem reads it: "
            f"AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for s3://)"
        ) from None


@contextlib.contextmanager
def _space_advice(store_path: str, what: str, partial=None):
    """A full disk (ENOSPC) while writing `what` becomes a StoreFullError that names the store and
    what to do; `partial()` first removes what was written of an unpublished group (no reader
    looks there), giving its space back so that the writer can still record the run's status."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        if partial is not None:
            with contextlib.suppress(Exception):
                partial()
        raise StoreFullError(
            f"no space left on the device of store {store_path} while writing {what} (nothing partial "
            f"was published); free space or choose another --store"
        ) from None


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _jsonable(x):
    """attrs must survive zarr's JSON: numpy scalars/arrays become Python values."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


class RunStore:
    """A dema-lab store at a local path or fsspec URL.

    mode "r": it must exist and be a dema-lab store. mode "a": created when missing.
    `unreadable` is {run_id: why} for the runs that the last run_ids() found but cannot read.
    """

    def __init__(self, path=None, mode: str = "r"):
        self.path = str(path if path is not None else DEFAULT_STORE)
        self.mode = mode
        self.unreadable: dict[str, str] = {}  # {run_id: why} for the runs that run_ids() could not read
        if not _is_url(self.path):
            self.path = str(Path(self.path).expanduser())
        else:
            _no_listings_cache(self.path)
        self.root = self._open_root(mode)

    def _open_root(self, mode):
        local = None if _is_url(self.path) else Path(self.path)
        if local is not None and mode != "r":
            _check_writable(local)
        if local is not None:
            empty = not local.exists() or (local.is_dir() and _only_placeholders(local))
        else:
            empty = _url_is_empty(self.path)
        if empty:
            if mode == "r":
                what = "it is empty" if local is None or local.exists() else "the path does not exist"
                raise EmptyStoreError(
                    f"no dema-lab store at {self.path}: {what}. Create a run with "
                    f"`dema-lab train` (or `make demo`), or point to another store"
                )
            try:
                # the marker is in the group's first zarr.json: no reader sees an unmarked store
                root = zarr.open_group(
                    self.path,
                    mode="a",
                    zarr_format=3,
                    attributes={"dema_lab": {"kind": "store", "version": STORE_VERSION, "created": _now()}},
                )
                root.require_group("runs")
            except Exception as e:  # noqa: BLE001 - filesystems and object stores raise many kinds here
                if local is not None:
                    raise
                raise StoreError(
                    f"cannot create a store at {self.path} ({type(e).__name__}: {e}); check that the "
                    f"bucket exists and the credentials and endpoint (--storage-option KEY=VALUE, or "
                    f"the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)"
                ) from None
            return root
        if local is not None and local.is_file():
            raise StoreError(f"{self.path} is a file, not a dema-lab store (a directory)")
        try:
            # validate read-only first: never write into a directory that is not ours
            root = zarr.open_group(self.path, mode="r", zarr_format=3)
        except Exception as e:  # noqa: BLE001 - zarr raises many kinds here
            raise StoreError(
                f"{self.path} is not a dema-lab store: it cannot be opened as a Zarr v3 "
                f"group ({type(e).__name__}: {e}). Use an empty directory or a store "
                f"created by `dema-lab train`"
            ) from None
        meta = root.attrs.get("dema_lab")
        if not isinstance(meta, dict) or meta.get("kind") != "store":
            raise StoreError(
                f"{self.path} is a Zarr group but not a dema-lab store (no dema_lab "
                f"store marker in its attributes); choose another path"
            )
        if meta.get("version", 0) > STORE_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer dema-lab (store version "
                f"{meta['version']}); upgrade dema-lab to read it"
            )
        return root if mode == "r" else zarr.open_group(self.path, mode="a", zarr_format=3)

    # ---------------------------------------------------------------- runs
    def run_ids(self) -> list[str]:
        """Runs in the store, oldest first (a run is listed once its group is created). A run being
        deleted is listed (status "deleting") until its last file goes: `dema-lab delete` finishes it."""
        self.unreadable.clear()
        found = []
        for name, group in self._run_groups():
            meta = group.attrs.get("dema_lab")
            if isinstance(meta, dict) and meta.get("kind") == "run":
                prov = group.attrs.get("provenance", {})
                found.append((str(prov.get("created", "")) if isinstance(prov, dict) else "", name))
            else:
                self.unreadable[name] = "its attributes hold no dema-lab run marker (damaged or not a run)"
        return [name for _, name in sorted(found)]

    def _run_groups(self) -> list:
        """(run_id, group) of the store's runs. Read through the `runs` group's listing; when its
        index (runs/zarr.json) is missing, from the run directories on disk, and the index is written
        again when the store is writable. Run directories without a zarr.json (a delete killed by an
        older release, a damaged run) go to `self.unreadable`, so that `delete` can remove them."""
        with warnings.catch_warnings():
            # a run being created by another process is a directory without zarr.json yet
            warnings.simplefilter("ignore", category=UserWarning)
            try:
                runs = self.root["runs"]
            except KeyError:
                runs = None
            if runs is None:
                groups = self._groups_one_by_one(self._run_dirs())
                if self.mode != "r":
                    self.root.require_group("runs")  # the index again; the runs in it are untouched
                return groups
            try:
                groups = list(runs.groups())
            except Exception:  # noqa: BLE001 - one corrupt run: read the others one by one
                if _is_url(self.path):
                    raise StoreError(
                        f"the runs of store {self.path} cannot be listed: one of them is damaged"
                    ) from None
                return self._groups_one_by_one(self._run_dirs())
        if not _is_url(self.path):
            listed = {name for name, _ in groups}
            groups += self._groups_one_by_one([d for d in self._run_dirs() if d not in listed])
        return groups

    def _run_dirs(self) -> list[str]:
        """The names of the directories (prefixes) under runs/, whatever they hold."""
        if not _is_url(self.path):
            runs = Path(self.path) / "runs"
            return sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.path)
        try:
            entries = fs.ls(f"{root.rstrip('/')}/runs", detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    def _groups_one_by_one(self, names) -> list:
        """The readable run groups among `names` (directories under runs/); the others go to
        `self.unreadable` as {run_id: reason} (`runs` and the dashboards show them as messages). A
        directory without zarr.json whose run lock a live process holds is being created or deleted
        right now: skipped."""
        from dema_lab.store.lock import RunLock

        groups = []
        for name in names:
            try:
                groups.append((name, zarr.open_group(self.path, path=f"runs/{name}", mode="r", zarr_format=3)))
            except Exception as e:  # noqa: BLE001 - zarr raises many kinds for a damaged group
                if self._has_index(name):
                    self.unreadable[name] = f"{type(e).__name__}: {e}"
                elif RunLock(self.path, name).holder() is None:
                    self.unreadable[name] = (
                        "its zarr.json is missing, so it is not a complete run (a delete that was "
                        "interrupted, or a damaged run)"
                    )
        return groups

    def _has_index(self, name: str) -> bool:
        if not _is_url(self.path):
            return (Path(self.path) / "runs" / name / "zarr.json").exists()
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.path)
        return fs.exists(f"{root.rstrip('/')}/runs/{name}/zarr.json")

    def run(self, run_id: str) -> Run:
        ids = self.run_ids()
        if run_id not in ids:
            import difflib

            close = difflib.get_close_matches(run_id, ids, n=3, cutoff=0.6)
            if close:
                hint = f"did you mean {' or '.join(close)}? `dema-lab runs --store {self.path}` lists all {len(ids)}"
            elif len(ids) > 8:
                hint = (
                    f"runs: {', '.join(ids[:8])} and {len(ids) - 8} more; "
                    f"`dema-lab runs --store {self.path}` lists them"
                )
            else:
                hint = f"runs: {', '.join(ids) or 'none yet'}"
            raise StoreError(f"run {run_id!r} is not in store {self.path} ({hint})")
        return Run(self, run_id)

    def create_run(self, run_id: str, config: dict, provenance: dict, hold_lock: bool = False) -> Run:
        """Create a run. Its writer lock (dema_lab.store.lock) is taken first, so of two creators of one
        run id only one creates it; the other gets a StoreError naming the winner. With hold_lock
        the returned run keeps the lock (its creator is its writer; run.release() frees it)."""
        if self.mode == "r":
            raise StoreError(f"store {self.path} was opened read-only")
        if not RUN_ID.fullmatch(run_id):
            raise StoreError(f"run id {run_id!r} must be letters, digits, '.', '_' or '-' (at most 128)")
        run = Run(self, run_id).claim()
        try:
            if run_id in self.run_ids() or run_id in self.unreadable:
                delete = f"delete it (dema-lab delete {run_id} --store {self.path})"
                try:
                    resumable = bool(run.published("resume"))
                except Exception:  # noqa: BLE001 - an unreadable run cannot be resumed
                    resumable = False
                raise StoreError(
                    f"run {run_id!r} already exists in {self.path}; "
                    + (
                        f"resume it (--resume {run_id}), {delete}"
                        if resumable
                        else f"it holds no checkpoint to resume from: {delete}"
                    )
                    + " or choose another run id"
                )
            attrs = {
                "dema_lab": {"kind": "run", "version": STORE_VERSION},
                "config": _jsonable(config),
                "provenance": _jsonable({**provenance, "created": _now()}),
                "status": "running",
                "published": {k: [] for k in KINDS},
            }
            try:
                # the group and its attributes appear in one write of its zarr.json
                with _space_advice(self.path, f"run {run_id}"):
                    self.root.require_group("runs").create_group(run_id, attributes=attrs)
            except StoreFullError:
                raise
            except Exception as e:  # noqa: BLE001 - zarr and the filesystem raise many kinds here
                raise StoreError(
                    f"run {run_id!r} cannot be created in {self.path} ({type(e).__name__}: {e}); "
                    f"check that the store is writable, or choose another run id"
                ) from None
        except BaseException:
            run.release()
            raise
        if not hold_lock:
            run.release()
        return run

    def delete_run(self, run_id: str) -> None:
        """Delete a run, readable or not, with everything in it. The run's writer lock is held while
        it goes: a run that a live process writes is refused (RunBusyError naming the writer).

        Resumable: the run is first marked (status "deleting", nothing published, in one atomic
        write of its zarr.json), so readers stop reading its groups; then its files go, its zarr.json
        last. Killed at any point, the run is still listed (status "deleting", or unreadable once
        only its directory is left) and deleting it again finishes the job."""
        from dema_lab.store.lock import RunBusyError, RunLock, describe

        if self.mode == "r":
            raise StoreError(f"store {self.path} was opened read-only; open it with mode='a' to delete runs")
        if run_id not in self.run_ids() and run_id not in self.unreadable:
            self.run(run_id)  # StoreError: not in the store, with the close matches
        lock = RunLock(self.path, run_id)
        try:
            lock.acquire()
        except RunBusyError:
            raise RunBusyError(
                f"run {run_id} is being written by {describe(lock.holder())}; stop that process "
                f"first, or wait for it to finish, then delete the run"
            ) from None
        try:
            if run_id not in self.unreadable:
                with _space_advice(self.path, f"run {run_id}'s status"):
                    Run(self, run_id).group.update_attributes(
                        {"status": "deleting", "published": {k: [] for k in KINDS}, "slots": {}}
                    )
            self._remove_run_files(run_id)
        finally:
            lock.release()
        self.unreadable.pop(run_id, None)

    def _remove_run_files(self, run_id: str) -> None:
        """Remove runs/<run_id>: every file but the run's zarr.json, then its zarr.json, then the
        directory (so that a kill leaves a listed run, see delete_run)."""
        if _is_url(self.path):
            import fsspec

            fs, root = fsspec.core.url_to_fs(self.path)
            base = f"{root.rstrip('/')}/runs/{run_id}"
            index = f"{base}/zarr.json"
            files = [f for f in fs.find(base) if f.rstrip("/") != index]
            if files:
                fs.rm(files)
            for target in (index, base):
                try:
                    fs.rm(target, recursive=target == base)
                except FileNotFoundError:
                    pass
            return
        base = Path(self.path) / "runs" / run_id
        index = base / "zarr.json"
        for dirpath, dirnames, filenames in os.walk(base, topdown=False):
            here = Path(dirpath)
            for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
                if here / name != index:
                    (here / name).unlink()
            if here != base:
                here.rmdir()
        index.unlink(missing_ok=True)
        if base.is_dir():
            base.rmdir()

    def stale_runs(self) -> list[str]:
        """Runs whose status is "running" but that no live process writes (dema_lab.store.lock): killed
        trainers' runs. Resume one with `dema-lab train --resume`, or delete it."""
        stale = []
        for run_id in self.run_ids():
            run = Run(self, run_id)
            try:
                running = run.attrs.get("status") == "running"
            except Exception:  # noqa: BLE001 - an unreadable run is listed as such, not as stale
                continue
            if running and run.writer() is None:
                stale.append(run_id)
        return stale


def _portable_strings(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width numpy strings have no Zarr v3 spec; variable-length ones ("string") do."""
    fixes = {name: var.astype(object) for name, var in ds.variables.items() if var.dtype.kind == "U"}
    return ds.assign_coords({k: v for k, v in fixes.items() if k in ds.coords}).assign(
        {k: v for k, v in fixes.items() if k not in ds.coords}
    )


def _check_writable(path: Path) -> None:
    """StoreError unless this user can write the local store at `path` (or create it): a read-only
    store is refused before any work, not with a PermissionError halfway through."""
    if path.is_file():
        return  # _open_root says it is not a store
    todo = [p for p in (path, path / "runs") if p.is_dir()]
    if not todo:  # created on the first write: its nearest existing parent
        parent = next((p for p in path.parents if p.exists()), None)
        todo = [parent] if parent is not None and parent.is_dir() else []
    for p in todo:
        if not os.access(p, os.W_OK | os.X_OK):
            what = "store" if p in (path, path / "runs") else "directory that would hold the store"
            raise StoreError(
                f"the {what} {p} is read-only for this user, and this command writes to the "
                f"store; choose a writable --store, or fix the permissions"
            )


def _upload_dataset(ds: xr.Dataset, url: str, group: str, encoding: dict) -> None:
    """ds.to_zarr(url, group=group, mode="w") for an fsspec URL, in one batch: the group is
    encoded in memory, the old objects under `group` removed, then every object uploaded at once
    (fsspec's concurrent pipe). Readers never look there before the write is published."""
    import fsspec

    objects: dict = {}
    ds.to_zarr(
        zarr.storage.MemoryStore(store_dict=objects), mode="w", zarr_format=3, consolidated=False, encoding=encoding
    )
    fs, root = fsspec.core.url_to_fs(url)
    dest = f"{root.rstrip('/')}/{group}"
    try:
        fs.rm(dest, recursive=True)
    except FileNotFoundError:
        pass
    fs.pipe({f"{dest}/{key}": buf.to_bytes() for key, buf in objects.items()})


def _only_placeholders(path: Path) -> bool:
    return all(p.name in ("README.md", ".gitignore", ".gitkeep") for p in path.iterdir())


class Run:
    """One run: its attributes, its published groups, and (for the trainer) writing them."""

    def __init__(self, store: RunStore, run_id: str):
        self.store = store
        self.run_id = run_id
        self.prefix = f"runs/{run_id}"
        self.lock = None  # a dema_lab.store.lock.RunLock while this object is the writer

    # ---------------------------------------------------------------- the one writer
    def claim(self) -> Run:
        """Become the run's one writer: take its lock (held until release(), or until the process
        dies); RunBusyError naming the holder (host, pid, since) when another live process has it."""
        from dema_lab.store.lock import RunLock

        if self.lock is None or not self.lock.held:
            self.lock = RunLock(self.store.path, self.run_id).acquire()
        return self

    def release(self) -> None:
        """Stop being the run's writer (a no-op when not)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def writer(self) -> dict | None:
        """The run's live writer as {host, pid, since, ...} (`since` in Unix seconds), or None when
        no live process writes it (a run "running" without one was killed)."""
        from dema_lab.store.lock import RunLock

        if self.lock is not None and self.lock.held:
            return self.lock.holder()
        return RunLock(self.store.path, self.run_id).holder()

    @property
    def group(self):
        return zarr.open_group(
            self.store.path, path=self.prefix, mode="r" if self.store.mode == "r" else "a", zarr_format=3
        )

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def config(self) -> dict:
        return self.attrs.get("config", {})

    def published(self, kind: str) -> list[str]:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
        return list(self.attrs.get("published", {}).get(kind, []))

    # ---------------------------------------------------------------- writing
    def location(self, kind: str, name: str, attrs: dict | None = None) -> str:
        """The group path that holds the published `kind/name` (see the module's protocol)."""
        attrs = self.attrs if attrs is None else attrs
        slot = attrs.get("slots", {}).get(f"{kind}/{name}", name)
        return f"{self.prefix}/{kind}/{slot}"

    def _free_slot(self, kind: str, name: str) -> str:
        """Where to write a new version of `kind/name`: its own name when it is not published yet,
        else the slot after the one readers use now, round the ring of SLOTS."""
        attrs = self.attrs
        if name not in attrs.get("published", {}).get(kind, []):
            return name
        current = attrs.get("slots", {}).get(f"{kind}/{name}", name)
        n = (int(current.rsplit(".slot", 1)[1]) if current != name else 0) + 1
        return f"{name}.slot{n}" if n < SLOTS else name

    def _publish(
        self, kind: str, name: str, remove: tuple[str, ...] = (), run_attrs: dict | None = None, slot: str | None = None
    ):
        """List `name` under `kind` (written in `slot`; set `run_attrs`) in one atomic write of the
        run's zarr.json."""
        if self.lock is not None:
            self.lock.check()  # a writer whose lease was taken over publishes nothing more
        group = self.group
        published = dict(group.attrs.get("published", {}))
        names = [n for n in published.get(kind, []) if n != name and n not in remove]
        published[kind] = names + [name]
        slots = {
            k: v for k, v in group.attrs.get("slots", {}).items() if k not in {f"{kind}/{n}" for n in (name, *remove)}
        }
        if slot not in (None, name):
            slots[f"{kind}/{name}"] = slot
        with _space_advice(self.store.path, f"run {self.run_id}'s list of published {kind} groups"):
            group.update_attributes({"published": published, "slots": slots, **_jsonable(run_attrs or {})})

    def unpublish(self, kind: str, names) -> None:
        group = self.group
        names = set(names)
        published = dict(group.attrs.get("published", {}))
        published[kind] = [n for n in published.get(kind, []) if n not in names]
        slots = {k: v for k, v in group.attrs.get("slots", {}).items() if k not in {f"{kind}/{n}" for n in names}}
        with _space_advice(self.store.path, f"run {self.run_id}'s list of published {kind} groups"):
            group.update_attributes({"published": published, "slots": slots})

    def write(self, kind: str, name: str, ds: xr.Dataset, encoding: dict | None = None) -> None:
        """Write a whole dataset as <kind>/<name>, then publish it."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
        ds = _portable_strings(ds.assign_attrs(_jsonable(dict(ds.attrs))))
        slot = self._free_slot(kind, name)
        with _space_advice(self.store.path, f"run {self.run_id}'s {kind}/{name}", lambda: self._discard(kind, slot)):
            if _is_url(self.store.path):  # an object store: one concurrent upload, not a request per step
                _upload_dataset(ds, self.store.path, f"{self.prefix}/{kind}/{slot}", encoding or {})
            else:
                ds.to_zarr(
                    self.store.path,
                    group=f"{self.prefix}/{kind}/{slot}",
                    mode="w",
                    zarr_format=3,
                    consolidated=False,
                    encoding=encoding or {},
                )
        self._publish(kind, name, slot=slot)

    def _discard(self, kind: str, slot: str) -> None:
        """Remove an unpublished slot's partial write (a full disk stopped it), whatever of it was
        written (its zarr.json, its parent group's, may be missing)."""
        where = f"{self.prefix}/{kind}/{slot}"
        if _is_url(self.store.path):
            import fsspec

            fs, root = fsspec.core.url_to_fs(self.store.path)
            fs.rm(f"{root.rstrip('/')}/{where}", recursive=True)
        else:
            shutil.rmtree(Path(self.store.path) / where)

    def write_bytes(
        self,
        kind: str,
        name: str,
        data: bytes,
        attrs: dict | None = None,
        replace: tuple[str, ...] = (),
        run_attrs: dict | None = None,
    ) -> None:
        """Store a blob (a checkpoint) as a uint8 array with its SHA-256 in its attributes (checked by
        read_bytes), publish it (with `run_attrs` set on the run in the same write), then drop
        `replace`d ones."""
        buf = np.frombuffer(data, dtype=np.uint8)
        attrs = {**(attrs or {}), "sha256": hashlib.sha256(data).hexdigest(), "nbytes": len(buf)}
        slot = self._free_slot(kind, name)
        gone = [self.location(kind, old).rsplit("/", 1)[-1] for old in replace if old != name]
        with _space_advice(self.store.path, f"run {self.run_id}'s {kind}/{name}", lambda: self._discard(kind, slot)):
            arr = zarr.create_array(
                self.store.path,
                name=f"{self.prefix}/{kind}/{slot}",
                shape=buf.shape,
                dtype="uint8",
                chunks=(max(1, min(len(buf), 1 << 24)),),
                attributes=_jsonable(attrs or {}),
                overwrite=True,
                zarr_format=3,
            )
            arr[:] = buf
        self._publish(kind, name, remove=replace, run_attrs=run_attrs, slot=slot)
        for old in gone:
            try:
                del self.group[kind][old]
            except KeyError:
                pass

    def blob_attrs(self, kind: str, name: str) -> dict:
        """The attributes stored with a published blob (a checkpoint's step, a resume state's RNG)."""
        attrs = self._check_published(kind, name)
        arr = zarr.open_array(self.store.path, path=self.location(kind, name, attrs), mode="r", zarr_format=3)
        return dict(arr.attrs)

    def set_attrs(self, **attrs) -> None:
        """Set run attributes, all in one atomic write of the run's zarr.json."""
        with _space_advice(self.store.path, f"run {self.run_id}'s attributes ({', '.join(attrs)})"):
            self.group.update_attributes(_jsonable(attrs))

    # ---------------------------------------------------------------- reading
    def _check_published(self, kind: str, name: str) -> dict:
        attrs = self.attrs
        names = attrs.get("published", {}).get(kind, [])
        if name not in names:
            raise StoreError(
                f"{kind}/{name} is not published in run {self.run_id} (published: {', '.join(names) or 'none'})"
            )
        return attrs

    def open(self, kind: str, name: str) -> xr.Dataset:
        attrs = self._check_published(kind, name)
        return xr.open_zarr(self.store.path, group=self.location(kind, name, attrs), consolidated=False, zarr_format=3)

    def read_bytes(self, kind: str, name: str) -> bytes:
        """A published blob, checked against the SHA-256 stored with it (blobs written before
        checksums existed are returned unchecked); IntegrityError naming it when damaged."""
        attrs = self._check_published(kind, name)
        try:
            arr = zarr.open_array(self.store.path, path=self.location(kind, name, attrs), mode="r", zarr_format=3)
            stored = dict(arr.attrs)
            data = arr[:].tobytes()
        except Exception as e:  # noqa: BLE001 - zarr and its codecs raise many kinds on a damaged chunk
            raise self._damaged(kind, name, f"it cannot be read: {type(e).__name__}: {e}") from None
        if "nbytes" in stored and len(data) != stored["nbytes"]:
            raise self._damaged(kind, name, f"it holds {len(data)} bytes, {stored['nbytes']} were written")
        if "sha256" in stored and hashlib.sha256(data).hexdigest() != stored["sha256"]:
            raise self._damaged(kind, name, "its SHA-256 differs from the one written with it")
        return data

    def _damaged(self, kind: str, name: str, why: str) -> IntegrityError:
        """The error for a damaged blob: which one, why, and what else this run can offer."""
        what = f"{kind} {name}"
        step = step_of(name)
        if step >= 0 and kind in ("checkpoint", "resume"):
            what = f"{'checkpoint' if kind == 'checkpoint' else 'resume state'} of step {step} ({name})"
        todo = []
        if kind == "checkpoint":
            others = [s for s in self.checkpoints() if checkpoint_name(s) != name]
            todo.append(
                f"use another checkpoint (steps {', '.join(map(str, others[-5:]))})"
                if others
                else "this run has no other checkpoint"
            )
        if kind == "resume" or name in self.published("resume"):
            states = sorted((step_of(n) for n in self.published("resume") if n != name), reverse=True)
            todo.append(
                f"to continue training, resume from an earlier state: dema-lab train --resume "
                f"{self.run_id} --from-step S (S: {', '.join(map(str, states))})"
                if states
                else "no other resume state is kept: train the run again under a new run id"
            )
        return IntegrityError(f"run {self.run_id}: the stored {what} is damaged ({why}); {'; '.join(todo)}")

    def train_metrics(self) -> xr.Dataset:
        """All published training metrics, by step (a later segment wins on repeated steps)."""
        parts = [self.open("train", n).load() for n in self.published("train")]
        if not parts:
            return xr.Dataset(coords={"step": np.zeros(0, np.int64)})
        ds = xr.concat(parts, dim="step")
        _, last = np.unique(ds.step.values[::-1], return_index=True)
        keep = np.sort(len(ds.step) - 1 - last)
        return ds.isel(step=keep)

    def evals(self) -> xr.Dataset:
        """Evaluation returns by (checkpoint, mode, target, episode)."""
        parts = [self.open("eval", n).load() for n in self.published("eval")]
        if not parts:
            return xr.Dataset()
        return xr.concat(parts, dim="checkpoint", join="outer").sortby("checkpoint")

    def decay(self) -> xr.Dataset:
        """Decay statistics by (checkpoint, layer, lag)."""
        parts = [self.open("decay", n).load() for n in self.published("decay")]
        if not parts:
            return xr.Dataset()
        return xr.concat(parts, dim="checkpoint", join="outer").sortby("checkpoint")

    def paper_attention(self) -> xr.Dataset:
        """The paper's attention display (analysis.paper_attention) by (checkpoint, layer,
        decision_step, lag); decision steps past a checkpoint's episode are NaN."""
        parts = [self.open("paper_attention", n).load() for n in self.published("paper_attention")]
        if not parts:
            return xr.Dataset()
        return xr.concat(parts, dim="checkpoint", join="outer", combine_attrs="drop_conflicts").sortby("checkpoint")

    def rollouts(self) -> list[str]:
        return self.published("rollout")

    def checkpoints(self) -> list[int]:
        return sorted(step_of(n) for n in self.published("checkpoint"))

    def checkpoint_bytes(self, step: int | None = None) -> bytes:
        steps = self.checkpoints()
        if not steps:
            raise StoreError(f"run {self.run_id} has no checkpoint yet")
        step = steps[-1] if step is None else step
        return self.read_bytes("checkpoint", checkpoint_name(step))

    def tree(self) -> xr.DataTree:
        """The run as an xarray DataTree: attrs at the root, one node per published group."""
        children = {}
        for kind in ("train", "eval", "decay", "paper_attention"):
            getter = {
                "train": self.train_metrics,
                "eval": self.evals,
                "decay": self.decay,
                "paper_attention": self.paper_attention,
            }[kind]
            children[kind] = xr.DataTree(getter())
        rollouts = {name: xr.DataTree(self.open("rollout", name)) for name in self.rollouts()}
        children["rollout"] = xr.DataTree(children=rollouts)
        attrs = self.attrs
        root = xr.Dataset(
            attrs={
                "run_id": self.run_id,
                "config": attrs.get("config", {}),
                "provenance": attrs.get("provenance", {}),
                "status": attrs.get("status", ""),
            }
        )
        return xr.DataTree(root, children=children)


def open_run(path=None, run_id: str | None = None) -> xr.DataTree:
    """One run as an xarray DataTree (train, eval, decay, rollout/<name>). Without run_id, the newest."""
    store = RunStore(path, mode="r")
    ids = store.run_ids()
    if run_id is None:
        if not ids:
            raise StoreError(f"store {store.path} has no runs yet; create one with `dema-lab train`")
        run_id = ids[-1]
    return store.run(run_id).tree()
