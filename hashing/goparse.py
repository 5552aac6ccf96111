"""Docker's Go parser (the `dockerfile` package), called in-process or in a child process.

The library keeps about eight times the text it parses for the life of the process (it is
never given back), which a one-shot CLI does not notice and a server serving hostile specs
must not accept. `isolate()` makes every later parse run in a child process instead, replaced
once it has parsed RECYCLE_BYTES of text, so the server's own memory stays where it is; a
parse that takes longer than PARSE_SECONDS is abandoned with its child.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import NamedTuple

RECYCLE_BYTES = 64 << 20  # text parsed by one child before it is replaced (it keeps ~8x)
PARSE_SECONDS = 20.0  # a parse of the largest accepted spec takes well under a second


class Heredoc(NamedTuple):
    name: str
    content: str


class Command(NamedTuple):
    """One instruction as the Go parser read it (the fields envctl uses)."""

    cmd: str
    sub_cmd: str | None
    json: bool
    original: str
    start_line: int
    flags: tuple[str, ...]
    value: tuple[str, ...]
    heredocs: tuple[Heredoc, ...]


class ParseError(Exception):
    """The Go parser refused the text; the message is its own."""


class ParseTimeout(Exception):
    """The parse did not finish within PARSE_SECONDS."""


def parse(text: str) -> tuple[Command, ...]:
    """The instructions of `text`; ParseError as the parser says, UnicodeDecodeError when it
    cuts a multi-byte character of a flag in two, ParseTimeout in a child that took too long."""
    pool = _pool
    if pool is None:
        return _parse_here(text)
    return pool.parse(text)


def isolate() -> None:
    """Parse in a child process from now on (a long-running server calls this once)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = _Pool()


def _parse_here(text: str) -> tuple[Command, ...]:
    import dockerfile  # loaded when a step is first parsed: a client gathering files never is

    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as exc:
        raise ParseError(str(exc)) from None
    return tuple(
        Command(
            cmd=c.cmd,
            sub_cmd=c.sub_cmd,
            json=bool(c.json),
            original=c.original,
            start_line=c.start_line,
            flags=tuple(c.flags),
            value=tuple(c.value),
            heredocs=tuple(Heredoc(h.name, h.content) for h in c.heredocs),
        )
        for c in commands
    )


class _Pool:
    """One child process at a time, replaced after RECYCLE_BYTES or a parse that hangs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._bytes = 0

    def parse(self, text: str) -> tuple[Command, ...]:
        for attempt in range(2):
            executor = self._take(len(text))
            future = executor.submit(_parse_here, text)
            try:
                return future.result(timeout=PARSE_SECONDS)
            except FutureTimeout:
                self._discard(executor)
                raise ParseTimeout(f"parsing took longer than {PARSE_SECONDS:g} s") from None
            except BrokenProcessPool:
                # the child died: killed for another caller's parse that hung, or out of
                # memory. Once more on a fresh one, so one request's text cannot fail another's
                self._discard(executor)
                if attempt:
                    raise ParseTimeout("the parser's process died") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop the child process (and the executor's thread), waiting for them."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _take(self, size: int) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is not None and self._bytes + size > RECYCLE_BYTES:
                self._executor.shutdown(wait=False)  # it finishes what it has, then exits
                self._executor = None
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=2, mp_context=multiprocessing.get_context("spawn")
                )
                self._bytes = 0
            self._bytes += size
            return self._executor

    def _discard(self, executor: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is executor:
                self._executor = None
        for process in list(getattr(executor, "_processes", {}).values()):
            process.kill()  # a hung parse ends with its child
        executor.shutdown(wait=False, cancel_futures=True)


_pool: _Pool | None = None
_lock = threading.Lock()
