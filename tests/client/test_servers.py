"""The way a client goes through the service's addresses (`client.servers`), on a clock the test
moves: in order from the last that answered, the next at once after a failure, a backoff only
between rounds and never past the bound, and ServiceUnavailable naming every address once none
has answered for the bound."""

from __future__ import annotations

import httpx
import pytest

from client.errors import ServiceUnavailable
from client.servers import Servers, Walk, reason

A, B, C = "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"
REFUSED = httpx.ConnectError("[Errno 111] Connection refused")


class Clock:
    """time.monotonic as the test says: it moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _servers(*urls: str, bound: float = 2.0) -> tuple[Servers, Clock]:
    clock = Clock()
    return Servers(urls, unreachable_after=bound, clock=clock), clock


def _ask(walk: Walk, clock: Clock) -> str:
    """The next address, after waiting (on the test's clock) what the walk says."""
    url, pause = walk.next()
    clock.now += pause
    return url


def _refused_until_given_up(walk: Walk, clock: Clock) -> tuple[list[tuple[str, float]], str]:
    """Every address refuses: (each address asked, and when), and what the walk said last."""
    asked: list[tuple[str, float]] = []
    while True:
        url = _ask(walk, clock)
        asked.append((url, clock.now))
        try:
            walk.failed(url, REFUSED)
        except ServiceUnavailable as exc:
            return asked, str(exc)


def test_each_failure_moves_to_the_next_address_at_once() -> None:
    servers, _ = _servers(A, B, C)
    walk = servers.walk()
    assert walk.next() == (A, 0.0)
    walk.failed(A, REFUSED)
    assert walk.next() == (B, 0.0)
    walk.failed(B, REFUSED)
    assert walk.next() == (C, 0.0)
    walk.answered(C)
    assert servers.preferred == 2
    assert servers.walk().next() == (C, 0.0), "the next call starts at the last that answered"


def test_a_round_of_failures_backs_off_within_the_bound_then_names_every_address() -> None:
    servers, clock = _servers(A, B, bound=2.0)
    asked, said = _refused_until_given_up(servers.walk(), clock)
    assert [url for url, _ in asked[:4]] == [A, B, A, B], "every round asks every address"
    assert len(asked) % 2 == 0, "it gives up at the end of a round, never in the middle"
    assert asked[-1][1] - asked[0][1] == pytest.approx(2.0), "the last round is at the bound"
    assert len(asked) > 4, "a closed port is asked again (a server may be restarting)"
    assert said == (
        f"no envctl server answered for 2 s: {A} (connection refused), {B} (connection refused)"
    )


def test_an_answer_forgets_the_failures_before_it() -> None:
    servers, clock = _servers(A, B, bound=2.0)
    walk = servers.walk()
    walk.failed(_ask(walk, clock), REFUSED)
    walk.failed(_ask(walk, clock), REFUSED)
    clock.now += 10.0  # an answer after a long outage (a log stream that reconnected)
    url = _ask(walk, clock)
    assert url == A
    walk.answered(url)
    walk.failed(url, "the log stream ended before the build did")  # no ServiceUnavailable
    assert walk.next() == (B, 0.0), "A answered, then dropped: B, at once"


def test_a_proxys_away_answer_is_a_failure_and_envctls_own_503_an_answer() -> None:
    servers, _ = _servers(A, B)
    walk = servers.walk()
    away = httpx.Response(502, text="<html>bad gateway</html>")
    assert not walk.answer(A, away)
    assert walk.next() == (B, 0.0)
    down = httpx.Response(503, json={"error": "unavailable", "kind": "unavailable",
                                     "message": "the registry is down"})  # fmt: skip
    assert walk.answer(B, down), "the service answered: that a registry is down"
    assert servers.preferred == 1


def test_a_deadline_ends_the_walk_before_the_bound() -> None:
    servers, clock = _servers(A, B, bound=30.0)
    walk = servers.walk(deadline=clock.now + 1.0)
    _, said = _refused_until_given_up(walk, clock)
    assert said.startswith("no envctl server answered in the time given")
    assert clock.now <= 1001.0 + 1e-9


def test_a_silent_address_may_not_use_up_the_bound() -> None:
    servers, clock = _servers(A, B, bound=2.0)
    walk = servers.walk()
    assert walk.connect_timeout() == 2.0
    walk.failed(_ask(walk, clock), httpx.ConnectTimeout("timed out"))
    clock.now += 1.9
    assert walk.connect_timeout() == 0.5, "the last round still reaches every address"


@pytest.mark.parametrize(
    ("exc", "said"),
    [
        (REFUSED, "connection refused"),
        (httpx.ConnectTimeout("timed out"), "connect timeout"),
        (httpx.ReadTimeout("timed out"), "timed out"),
        (httpx.RemoteProtocolError("peer closed connection"), "connection dropped"),
        (httpx.ReadError("[Errno 104] Connection reset by peer"), "connection reset"),
    ],
)
def test_a_transport_error_is_said_in_a_few_words(exc: Exception, said: str) -> None:
    assert reason(exc) == said


def test_the_first_round_of_failures_is_said_at_once_and_only_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    servers, clock = _servers(A, B, bound=2.0)
    walk = servers.walk()
    walk.failed(_ask(walk, clock), REFUSED)
    assert not caplog.records, "one address refused: the next is asked first"
    walk.failed(_ask(walk, clock), REFUSED)
    (notice,) = [record.getMessage() for record in caplog.records]
    assert notice == (
        f"no envctl server answered yet: {A} (connection refused), {B} (connection refused);"
        " trying again for up to 2 s"
    )
    _refused_until_given_up(walk, clock)
    assert len(caplog.records) == 1
