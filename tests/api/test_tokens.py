"""The server's token checks: one query per secret at a time, shared by every request that
carries the secret, against a real store (SQLite, a file per test)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from api.tokens import TokenCache
from service.records import Token
from service.store import BuildStore

WAIT = 60  # seconds a test waits for the other side before it fails


def test_a_caller_cancelled_mid_check_leaves_the_others_their_answer(tmp_path: Path) -> None:
    """A log stream asks before each read and is cancelled when its client hangs up; a
    request sharing its check (same token, the entry expired) gets the token all the same,
    not the stream's cancellation (which no handler maps: the server answered a bare 500)."""
    store = BuildStore(f"sqlite:///{tmp_path / 'envctl.db'}")
    store.add_workspace("alpha", "oci:/srv/alpha")
    token, secret = store.add_token("alpha")
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def authenticate(asked: str) -> Token | None:  # the real query, held until told
        calls.append(asked)
        entered.set()
        assert release.wait(WAIT), "the test never released the query"
        return store.authenticate(asked)

    async def scenario() -> None:
        tokens = TokenCache(ttl=0)  # as the tests' servers run: every request asks
        stream = asyncio.create_task(tokens.check(secret, authenticate))
        assert await asyncio.to_thread(entered.wait, WAIT), "the stream's check never ran"
        request = asyncio.create_task(tokens.check(secret, authenticate))
        await asyncio.sleep(0)  # the request's first step: it finds the query and waits on it
        stream.cancel()  # the stream's client hung up
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await stream
        assert await asyncio.wait_for(request, WAIT) == token
        # the query it shared ran once; the next check asks again (ttl=0)
        assert await asyncio.wait_for(tokens.check(secret, store.authenticate), WAIT) == token

    try:
        asyncio.run(scenario())
    finally:
        store.close()
    assert calls == [secret]


def test_a_check_every_caller_left_still_ends_and_the_next_caller_asks_again(
    tmp_path: Path,
) -> None:
    store = BuildStore(f"sqlite:///{tmp_path / 'envctl.db'}")
    store.add_workspace("alpha", "oci:/srv/alpha")
    token, secret = store.add_token("alpha")
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()

    def authenticate(asked: str) -> Token | None:
        entered.set()
        assert release.wait(WAIT), "the test never released the query"
        try:
            return store.authenticate(asked)
        finally:
            finished.set()

    async def scenario() -> None:
        tokens = TokenCache(ttl=60)
        callers = [asyncio.create_task(tokens.check(secret, authenticate)) for _ in range(3)]
        assert await asyncio.to_thread(entered.wait, WAIT), "the check never ran"
        for caller in callers:
            caller.cancel()
        release.set()
        for caller in callers:
            with pytest.raises(asyncio.CancelledError):
                await caller
        assert await asyncio.to_thread(finished.wait, WAIT), "the query never ended"
        # the query nobody waited for any more still answered, and its answer is kept
        assert await asyncio.wait_for(tokens.check(secret, _unasked), WAIT) == token

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def _unasked(secret: str) -> Token | None:
    raise AssertionError(f"asked the database about {secret!r}: the answer was kept")
