"""A build on the engine within its deadline: its cancellation (the connection shut down, so the
engine sees its client go and removes the RUN container) and its context archive, sent in
blocks that stop at the deadline.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import requests


class Expired(Exception):
    """The deadline passed before the engine started answering."""


class Canceller:
    """Cancels a build at its deadline by shutting its connection down.

    Closing a socket another thread is blocked reading from neither wakes that thread nor tells
    the engine; shutdown does both: the read returns, and the engine sees its client go, which
    cancels the build (it kills and removes the RUN container).
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self.fire)
        self._timer.daemon = True
        self._timer.start()

    def check(self) -> None:
        """Raise Expired when past the deadline."""
        if self.fired or time.monotonic() >= self.deadline:
            self.fire()
            raise Expired

    def fire(self) -> None:
        """Cancel now."""
        with self._lock:
            self.fired = True
            if self._socket is not None:
                with contextlib.suppress(OSError):  # already closed: the build has ended
                    self._socket.shutdown(socket.SHUT_RDWR)

    def attach(self, response: requests.Response) -> None:
        """Cancel by shutting down `response`'s connection (at once, if already past due)."""
        with self._lock:
            self._socket = getattr(response.raw.connection, "sock", None)
        if self.fired:
            self.fire()

    def stop(self) -> None:
        """The build is over: never fire, and forget the connection (it goes back to a pool)."""
        self._timer.cancel()
        with self._lock:
            self._socket = None


class DeadlineReader:
    """The context archive as the request body, read in blocks, refused past the deadline."""

    def __init__(self, file: IO[bytes], cancel: Canceller) -> None:
        self._size = file.tell()
        file.seek(0)
        self._file = file
        self._cancel = cancel

    def __len__(self) -> int:
        return self._size  # so requests sends a Content-Length instead of chunking

    def read(self, size: int = -1) -> bytes:
        self._cancel.check()
        return self._file.read(size)


def context_tar(
    root: Path, archive: IO[bytes], cancel: Canceller, modes: Mapping[str, int]
) -> None:
    """Archive `root` as it is, but with `modes` (by path) where given; no .dockerignore: the
    caller assembled exactly the context."""
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for path in _walk(root):
            cancel.check()
            info = tar.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
            if not info.issym():  # a link's own mode means nothing
                info.mode = modes.get(info.name, info.mode)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with path.open("rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)


def _walk(root: Path) -> Iterator[Path]:
    """Every path under `root`, sorted, each directory before its contents; links not followed."""
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        if base != root:
            yield base
        links = {d for d in dirs if (base / d).is_symlink()}  # archived as links, not walked
        dirs[:] = sorted(set(dirs) - links)
        yield from (base / name for name in sorted([*files, *links]))
