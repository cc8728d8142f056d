"""One writer per run: a lock held for the run's whole life, taken before the run is created.

    local store   <store>/locks/<run_id>.lock        an OS file lock (flock); the kernel frees it the
                                                     moment its process dies, so a killed trainer's
                                                     lock is taken over at once
    fsspec URL    <store>/locks/<run_id>.lease.json  a lease with an expiry that the holder's heartbeat
                                                     thread pushes forward every LEASE_SECONDS / 4; an
                                                     expired lease, or one whose pid is dead on this
                                                     host, is taken over

Either way the object names its holder (host, pid, since), so a refused writer is told who holds
the run. An object store has no exclusive create: a new lease is written, read back after a
moment, and kept only if it is still ours (the later of two simultaneous writers wins, the other
is refused).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from dema_lab.store.errors import StoreError

LEASE_SECONDS = 60.0  # a remote lease not refreshed for this long is free to take over
SETTLE_SECONDS = 0.5  # how long a new remote lease waits before reading itself back


class RunBusyError(StoreError):
    """Another live process writes this run (it holds the run's lock or lease)."""


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.UTC).isoformat(timespec="seconds")


def pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return True
    return True


def describe(holder: dict | None) -> str:
    """'host H, pid P, since T' for messages."""
    if not holder:
        return "another process (its lock file names no holder yet)"
    since = holder.get("since")
    since = _iso(since) if isinstance(since, (int, float)) else str(since or "?")
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {since}"


class RunLock:
    """The writer lock of one run of a store (see the module docstring). `acquire()` takes it or
    raises RunBusyError naming the holder; `release()` frees it; `check()` raises if a remote lease
    was lost (taken over after a missed heartbeat); `holder()` is the live holder or None."""

    def __init__(self, store_path: str, run_id: str, lease_seconds: float | None = None):
        self.store_path = str(store_path)
        self.run_id = run_id
        self.lease_seconds = float(LEASE_SECONDS if lease_seconds is None else lease_seconds)
        self.remote = "://" in self.store_path
        self.token = uuid.uuid4().hex
        self.info: dict | None = None  # what we wrote while we hold it
        self.lost: dict | None = None  # the holder that took a remote lease over from us
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.remote:
            self._use_lease(self.store_path)
        else:
            self._path = str(Path(self.store_path) / "locks" / f"{run_id}.lock")

    def _use_lease(self, url: str) -> None:
        import fsspec

        self.remote = True
        self._fs, root = fsspec.core.url_to_fs(url)
        self._path = f"{root.rstrip('/')}/locks/{self.run_id}.lease.json"

    @property
    def held(self) -> bool:
        return self.info is not None

    def _record(self) -> dict:
        now = _now()
        since = self.info["since"] if self.info else now
        return {
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": since,
            "heartbeat": now,
            "expires": now + self.lease_seconds,
            "token": self.token,
        }

    def _busy(self, holder) -> RunBusyError:
        return RunBusyError(
            f"run {self.run_id} is being written by {describe(holder)}; wait for it to finish "
            f"(or stop that process) before training or resuming it, or use another run id"
        )

    # ---------------------------------------------------------------- taking and freeing
    def acquire(self) -> RunLock:
        if self.held:
            return self
        (self._acquire_remote if self.remote else self._acquire_local)()
        return self

    def _acquire_local(self):
        import fcntl

        try:
            os.makedirs(os.path.dirname(self._path), exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(
                f"cannot take the writer lock of run {self.run_id} at {self._path} ({e.strerror}); "
                f"the store must be writable"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read_local(fd)
            os.close(fd)
            raise self._busy(holder) from None
        except OSError:  # a filesystem without locks (some network mounts): a lease
            os.close(fd)
            self._use_lease(Path(self.store_path).resolve().as_uri())
            return self._acquire_remote()
        self._fd = fd
        self.info = self._record()
        self._write_local(self.info)

    def _acquire_remote(self):
        current = self._read_remote()
        if current and self._alive(current):
            raise self._busy(current)
        self.info = self._record()
        self._write_remote(self.info)
        time.sleep(SETTLE_SECONDS)
        again = self._read_remote()
        if not again or again.get("token") != self.token:
            self.info = None
            raise self._busy(again)
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Free the lock (a no-op when not held)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
        if self.remote and self.info is not None and self.lost is None:
            try:
                current = self._read_remote()
                if current and current.get("token") == self.token:
                    self._fs.rm(self._path)
            except Exception:  # noqa: BLE001 - an unreachable store: the lease expires by itself
                pass
        if self._fd is not None:
            import fcntl

            try:
                os.ftruncate(self._fd, 0)  # no holder named: the lock file says it is free
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
        self.info = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        if self._fd is not None:  # the kernel frees the flock with its last descriptor
            try:
                os.close(self._fd)
            except OSError:
                pass

    def check(self) -> None:
        """Raise RunBusyError when a remote lease was taken over while we held it."""
        if self.lost is not None:
            raise RunBusyError(
                f"run {self.run_id}: its lease was taken over by {describe(self.lost)} (this "
                f"writer's heartbeat came too late); stopping without writing more"
            )

    # ---------------------------------------------------------------- who holds it
    def holder(self) -> dict | None:
        """The live holder's record (host, pid, since, ...), or None when nobody holds the lock."""
        if self.remote:
            current = self._read_remote()
            return current if current and self._alive(current) else None
        if self._fd is not None:
            return dict(self.info or {})
        import fcntl

        try:
            fd = os.open(self._path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._read_local(fd) or {}
            except OSError:  # no locks on this filesystem: its writers hold leases
                self._use_lease(Path(self.store_path).resolve().as_uri())
                return self.holder()
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def _alive(self, record: dict) -> bool:
        try:
            expires = float(record.get("expires", 0))
        except (TypeError, ValueError):
            return False
        if expires < _now():
            return False
        return not (record.get("host") == socket.gethostname() and not pid_alive(record.get("pid")))

    # ---------------------------------------------------------------- the objects
    @staticmethod
    def _read_local(fd) -> dict:
        for _ in range(3):  # the holder may be writing it this very moment
            try:
                text = os.pread(fd, 1 << 16, 0)
                return json.loads(text) if text.strip() else {}
            except (OSError, ValueError):
                time.sleep(0.05)
        return {}

    def _write_local(self, record: dict) -> None:
        data = json.dumps(record).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def _read_remote(self) -> dict | None:
        try:
            text = self._fs.cat_file(self._path)
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
        except ValueError:
            return {}  # unreadable: treated as expired
        return record if isinstance(record, dict) else {}

    def _write_remote(self, record: dict) -> None:
        self._fs.makedirs(self._path.rsplit("/", 1)[0], exist_ok=True)
        self._fs.pipe_file(self._path, json.dumps(record).encode())

    def _heartbeat(self):
        while not self._stop.wait(self.lease_seconds / 4):
            try:
                current = self._read_remote()
                if current is not None and current.get("token") not in (None, self.token):
                    self.lost = current
                    return
                self.info = self._record()
                self._write_remote(self.info)
            except Exception:  # noqa: BLE001 - a failed refresh is retried; expiry covers a long outage
                continue
