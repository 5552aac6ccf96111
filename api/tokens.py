"""Bearer tokens as the server checks them: live tokens remembered for a few seconds, and one
database query per secret at a time however many requests carry it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial

from service.records import Token
from service.service import run_blocking

TOKEN_CACHE_SIZE = 10_000


class TokenCache:
    """Live tokens by secret, trusted for `ttl` seconds: a revocation takes effect in every
    server process within that time, and a hit does not wait on the database. One check per
    secret at a time: when a busy token's entry expires, its callers share one query.

    The shared query runs in a task of its own, not in the task of the caller that started
    it: that caller may be cancelled (a log stream asks before each read, and is cancelled
    when its client hangs up), and its cancellation must not become the answer of the other
    requests waiting on the query (a CancelledError no error handler maps: a bare 500)."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._tokens: dict[str, tuple[Token, float]] = {}
        self._checks: dict[str, asyncio.Task[Token | None]] = {}

    async def check(self, secret: str, authenticate: Callable[[str], Token | None]) -> Token | None:
        """The live token whose secret this is (from memory, or asked of `authenticate`).
        Cancelling a caller cancels its wait only, never the query others share."""
        found = self._tokens.get(secret)
        if found is not None and time.monotonic() - found[1] <= self._ttl:
            return found[0]
        pending = self._checks.get(secret)
        if pending is None:
            pending = asyncio.create_task(self._authenticate(secret, authenticate))
            self._checks[secret] = pending  # held until done: the loop keeps only weak refs
            pending.add_done_callback(partial(self._checked, secret))
        return await asyncio.shield(pending)

    async def _authenticate(
        self, secret: str, authenticate: Callable[[str], Token | None]
    ) -> Token | None:
        token = await run_blocking(authenticate, secret)
        if token is not None:
            if len(self._tokens) > TOKEN_CACHE_SIZE:
                self._tokens.clear()  # a flood of distinct tokens: start again, do not grow
            self._tokens[secret] = (token, time.monotonic())
        return token

    def _checked(self, secret: str, task: asyncio.Task[Token | None]) -> None:
        if self._checks.get(secret) is task:
            del self._checks[secret]
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have gone before it ended
