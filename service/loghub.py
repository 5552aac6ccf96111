"""Live build logs for any number of watchers, without a thread each.

Build threads write each log line to the database, then `publish` it here. Watchers are
coroutines on the server's event loop: they read what is in memory (the whole log of a build
this process runs) or in the database (a build another process runs, or one that is over),
then sleep on one asyncio event per build until the next line or the end. A build run by
another process wakes nobody here, so watchers also look at the database every `poll` seconds.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import threading

from service.records import LogLine

FINISHED_KEPT = 10_000  # ends remembered for threads that wait on them


class LogHub:
    """In-memory logs of the builds this process runs, and wake-ups for their watchers."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._lines: dict[str, list[LogLine]] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._ends: dict[str, asyncio.Event] = {}
        self._guard = threading.Lock()
        self._done = threading.Condition(self._guard)
        self._finished: set[str] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake watchers on `loop` (the server's event loop, once it runs)."""
        self._loop = loop

    def start(self, build_id: str) -> None:
        """A build this process runs has started: keep its log in memory from its next line
        (line 1, or after the lines of an earlier run of it that died with its process)."""
        with self._guard:
            self._lines[build_id] = []
            self._finished.discard(build_id)
            self._done.notify_all()

    def publish(self, build_id: str, line: LogLine) -> None:
        """A line of a build this process runs (called from its build thread)."""
        with self._guard:
            lines = self._lines.get(build_id)
            if lines is not None:
                lines.append(line)
            self._done.notify_all()
        self._wake(build_id)

    def finish(self, build_id: str) -> None:
        """The build is over (its outcome is in the database): wake every watcher and waiter."""
        with self._guard:
            self._lines.pop(build_id, None)
            if len(self._finished) >= FINISHED_KEPT:
                self._finished.clear()  # waiters of older builds find their outcome in the db
            self._finished.add(build_id)
            self._done.notify_all()
        self._wake(build_id, done=True)

    def lines_after(self, build_id: str, after: int) -> list[LogLine] | None:
        """Lines with seq > after from memory; None when this process does not hold the log."""
        with self._guard:
            lines = self._lines.get(build_id)
            if lines is None or (lines and lines[0].seq > after + 1):
                return None  # not held here, or held from a later line (a re-run build)
            return lines[bisect.bisect_right(lines, after, key=lambda line: line.seq) :]

    def event(self, build_id: str, *, done: bool = False) -> asyncio.Event:
        """The event set at the build's next line or end (`done`: at its end only). Take it
        before reading the log, then `sleep` on it: a line logged in between still wakes you."""
        events = self._ends if done else self._events
        event = events.get(build_id)
        if event is None:
            event = events[build_id] = asyncio.Event()
        return event

    @staticmethod
    async def sleep(event: asyncio.Event, timeout: float) -> None:
        """Until `event` is set or `timeout` seconds pass."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def wait_finished(self, build_id: str, timeout: float) -> None:
        """Block a thread until the build ends here or `timeout` passes (embedded use). A
        build that ended here since the caller looked is remembered: no wait then."""
        with self._done:
            self._done.wait_for(lambda: build_id in self._finished, timeout)

    def wait_change(self, build_id: str, after: int, timeout: float) -> None:
        """Block a thread until the build has a line past `after` here, ends here, or
        `timeout` passes (embedded use)."""

        def changed() -> bool:
            lines = self._lines.get(build_id)
            return build_id in self._finished or bool(lines and lines[-1].seq > after)

        with self._done:
            self._done.wait_for(changed, timeout)

    def _wake(self, build_id: str, *, done: bool = False) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._set, build_id, done)

    def _set(self, build_id: str, done: bool) -> None:
        # on the loop: wake everyone sleeping on this build, then give the next sleepers a
        # fresh event (a set asyncio.Event would wake them again at once)
        for events in (self._events, self._ends) if done else (self._events,):
            event = events.pop(build_id, None)
            if event is not None:
                event.set()
