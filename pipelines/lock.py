"""One writer at a time on an output folder: ``OUT/.curate-lock`` is held by the run writing it, and names it.

On a local folder the lock is an ``flock`` on that file, held while the process lives: the kernel drops it
when the holder ends, even by SIGKILL, so a dead holder never blocks the next run. On an object store the
lock object is created only where none exists (a conditional put) and a background thread refreshes its
``heartbeat``; one whose heartbeat is older than ``lease`` seconds belonged to a run that died and is
taken over. Either way the file holds the holder's host, pid, start time and command, which the refusal
of a second run names::

    with OutputLock(out, "curate run --lake lake --out out"):
        ...   # write OUT
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from dinolab.curate import output
from dinolab.curate.output import Location, RemotePath
from dinolab.pipelines.state import RunError

LOCK_FILE = ".curate-lock"
LEASE_S = 120.0
"""Seconds without a heartbeat after which an object-store lock is taken over."""
HEARTBEAT_S = 15.0


class LockError(RunError):
    """``OUT`` is held by another run."""


def holder_line(holder: dict) -> str:
    started = datetime.fromtimestamp(holder.get("started", 0), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {started}, "
            f"command: {holder.get('command', '?')}")


class OutputLock:
    """The lock on ``out`` for ``command`` (a context manager); :class:`LockError` when another run holds it."""

    def __init__(self, out: Location, command: str, lease: float = LEASE_S, heartbeat: float = HEARTBEAT_S) -> None:
        self.out, self.path = out, output.join(out, LOCK_FILE)
        self.lease, self.heartbeat = lease, heartbeat
        now = time.time()
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now,
                       "command": command, "token": uuid.uuid4().hex}
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> OutputLock:
        if isinstance(self.path, RemotePath):
            self._acquire_remote()
        else:
            self._acquire_local()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _refuse(self, holder: dict) -> LockError:
        return LockError(f"{self.out} is in use by another run ({holder_line(holder)}); wait for it to end")

    # -- a local folder: flock -----------------------------------------------------------------------

    def _acquire_local(self) -> None:
        output.makedirs(self.out)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(Path(self.path).read_bytes())
            os.close(fd)
            raise self._refuse(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.holder).encode(), 0)
        self._fd = fd

    # -- an object store: conditional create, heartbeat, lease -----------------------------------------

    def _acquire_remote(self) -> None:
        for _ in range(3):
            if self._create():
                self._thread = threading.Thread(target=self._beat, name="curate-lock-heartbeat", daemon=True)
                self._thread.start()
                return
            current = self._read()
            if current is None:
                continue  # released meanwhile
            if time.time() - float(current.get("heartbeat", 0)) <= self.lease:
                raise self._refuse(current)
            if self._read() == current:  # still the dead run's: take it over
                output.remove(self.path)
        raise LockError(f"{self.out}: could not take the lock {self.path.name} (other runs keep taking it)")

    def _create(self) -> bool:
        fs, key = self.path.filesystem()
        data = json.dumps(self.holder).encode()
        try:
            fs.pipe_file(key, data, mode="create")
        except TypeError:  # a filesystem without conditional writes: check, write, read back
            if fs.exists(key):
                return False
            fs.pipe_file(key, data)
            time.sleep(0.5)
            return (self._read() or {}).get("token") == self.holder["token"]
        except FileExistsError:
            return False
        except OSError as error:
            raise LockError(f"{self.out}: cannot write its lock {self.path.name} ({error})") from None
        fs.invalidate_cache(key)
        return True

    def _read(self) -> dict | None:
        try:
            return _parse(output.read_bytes(self.path))
        except FileNotFoundError:
            return None

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            if (self._read() or {}).get("token") != self.holder["token"]:
                return  # taken over: this run can no longer refresh it
            self.holder["heartbeat"] = time.time()
            output.write_bytes(self.path, json.dumps(self.holder).encode())

    def release(self) -> None:
        """Let the next run take ``OUT`` (a local lock file stays, empty; a lock object is deleted)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if (self._read() or {}).get("token") == self.holder["token"]:
                output.remove(self.path)


def _parse(data: bytes) -> dict:
    try:
        found = json.loads(data)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
