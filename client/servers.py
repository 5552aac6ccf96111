"""Which envctl server a client asks: the addresses of one service (servers sharing one
database, or one address behind a load balancer), tried in order from the last that answered,
and a bound on how long none of them may answer before the client says so.

    servers = Servers(server_urls("http://a:8080,http://b:8080"), unreachable_after=30.0)
    walk = servers.walk()                    # one call's (or one log stream's) way through them
    url, pause = walk.next()                 # where to ask, and how long to wait first
    walk.failed(url, exc)                    # refused, reset, timed out: the next address
    walk.answer(url, response)               # False for a proxy's 502-504 (a failure too)

A transport error or a proxy's 502/503/504 without envctl's error body moves to the next
address at once; after a round in which every address failed, the walk waits (short backoff,
jittered) and goes round again, since a server may be restarting, until `unreachable_after`
seconds have passed since the first failure: then it raises ServiceUnavailable naming each
address and what it did. An answer in envctl's error body is the service's answer, never a
reason to ask another server.

Asking another server again is safe for every call the client makes: the GETs read, /v1/hash
computes, and a resolve joins the key's active build (the store keeps one active build per
workspace and key, race-free across processes), so a resolve that a server that went away may
have received, and queued, is joined by the next server, not built twice. The one exception is
`force_rebuild`: if the first server's build had already finished when the second is asked,
the second builds again (an extra build, never a wrong image).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import httpx

from client.errors import ServiceUnavailable
from hashing import SpecError
from hashing.errors import Kind

log = logging.getLogger("envctl.client")
UNREACHABLE_AFTER = 30.0  # seconds without any address answering before the client gives up
CONNECT_TIMEOUT = 10.0  # at most, per attempt (less as the bound nears): a silent address
MIN_CONNECT_TIMEOUT = 0.5  # at least, so that the last round still reaches every address
AWAY_STATUSES = {502, 503, 504}  # from a proxy, without envctl's error body


def server_urls(value: str | Sequence[str], source: str = "ENVCTL_URL") -> tuple[str, ...]:
    """The addresses of an envctl service, checked: a comma-separated list (or a sequence) of
    http(s) URLs without credentials in them (the token goes in ENVCTL_TOKEN); trailing slashes
    dropped, duplicates once. A SpecError naming `source` otherwise."""
    items = value.split(",") if isinstance(value, str) else list(value)
    urls: list[str] = []
    for item in (text.strip() for text in items):
        if not item:
            continue
        url = _checked(item, source)
        if url not in urls:
            urls.append(url)
    if not urls:
        raise SpecError("no server address: give one or more http(s) URLs", source=source)
    return tuple(urls)


def _checked(text: str, source: str) -> str:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        raise SpecError(f"not a URL: {_shown(text)!r}", source=source) from None
    if parts.username is not None or parts.password is not None:
        raise SpecError(
            f"{_shown(text)!r} has credentials in it: give the token in ENVCTL_TOKEN",
            source=source,
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SpecError(
            f"{_shown(text)!r} is not an http:// or https:// URL with a host", source=source
        )
    if parts.query or parts.fragment:
        raise SpecError(f"{_shown(text)!r}: no query or fragment, please", source=source)
    return text.rstrip("/")


def _shown(text: str) -> str:
    """A URL as an error may print it: without whatever stands before an '@' (credentials)."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}"


def envctl_body(response: httpx.Response) -> dict[str, object] | None:
    """The answer's envctl error body (`{"error", "kind", "message", ...}`), if it is one."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("kind") in Kind.__members__.values():
        return body
    return None


def is_away(response: httpx.Response) -> bool:
    """Whether an answer says that the server is away rather than answering: a proxy's
    502/503/504 without envctl's error body (its body must have been read)."""
    return response.status_code in AWAY_STATUSES and envctl_body(response) is None


class Servers:
    """The addresses of one envctl service and which one answered last (shared by every call
    of a client, threads and tasks included: a stale read only costs one refused connection)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        unreachable_after: float = UNREACHABLE_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("no server address")
        if not unreachable_after > 0:
            raise ValueError(f"unreachable_after must be positive: {unreachable_after}")
        self.urls = tuple(urls)
        self.unreachable_after = unreachable_after
        self.preferred = 0  # index of the last address that answered
        self.clock = clock

    def walk(self, *, deadline: float | None = None) -> Walk:
        """A new way through the addresses, from the last that answered; `deadline` (on
        `clock`, time.monotonic by default) also ends it."""
        return Walk(self, deadline)


class Walk:
    """One call's (or one log stream's) way through the addresses: which to ask next, how long
    to wait before, and when no address has answered for long enough to give up."""

    def __init__(self, servers: Servers, deadline: float | None = None) -> None:
        self._servers = servers
        self._deadline = deadline
        self._start = servers.preferred
        self._step = 0  # addresses failed since the last answer
        self._failing_since: float | None = None
        self._errors: dict[str, str] = {}

    def next(self) -> tuple[str, float]:
        """The address to ask, and seconds to wait before asking: none within a round, a
        backoff between rounds (never past the bound: the last round is at the bound)."""
        urls = self._servers.urls
        url = urls[(self._start + self._step) % len(urls)]
        rounds, within = divmod(self._step, len(urls))
        if rounds == 0 or within:
            return url, 0.0
        return url, min(_backoff(rounds - 1), max(0.0, self._give_up_at() - self._servers.clock()))

    def connect_timeout(self) -> float:
        """Seconds an attempt may take to connect: a silent address must not use up the bound,
        yet the last round must still reach every address."""
        left = self._give_up_at() - self._servers.clock()
        return min(CONNECT_TIMEOUT, max(MIN_CONNECT_TIMEOUT, left))

    def failed(self, url: str, why: Exception | str) -> None:
        """Note that `url` did not answer; ServiceUnavailable once every address has failed in
        a round ending after the bound (or the deadline)."""
        now = self._servers.clock()
        if self._failing_since is None:
            self._failing_since = now
        self._errors[url] = why if isinstance(why, str) else reason(why)
        self._step += 1
        if self._deadline is not None and now >= self._deadline:
            raise ServiceUnavailable(self._message("in the time given"))
        if self._step % len(self._servers.urls) == 0:
            if now >= self._give_up_at():
                raise ServiceUnavailable(
                    self._message(f"for {self._servers.unreachable_after:g} s")
                )
            if self._step == len(self._servers.urls):  # said once, at once: not an hour's silence
                log.warning(
                    "%s; trying again for up to %.0f s",
                    self._message("yet"),
                    max(1.0, self._give_up_at() - now),
                )

    def answer(self, url: str, response: httpx.Response) -> bool:
        """True when `response` is the service's answer (`url` is then where the next call
        starts); a proxy's 'away' is a failure (see `failed`), and False."""
        if is_away(response):
            self.failed(url, f"HTTP {response.status_code} from a proxy")
            return False
        self.answered(url)
        return True

    def answered(self, url: str) -> None:
        """`url` answered: the failures so far are forgotten, and the next call starts there."""
        index = self._servers.urls.index(url)
        self._servers.preferred = self._start = index
        self._step, self._failing_since = 0, None
        self._errors.clear()

    def _give_up_at(self) -> float:
        since = self._failing_since if self._failing_since is not None else self._servers.clock()
        at = since + self._servers.unreachable_after
        return at if self._deadline is None else min(at, self._deadline)

    def _message(self, how_long: str) -> str:
        tried = ", ".join(f"{url} ({why})" for url, why in self._errors.items())
        return f"no envctl server answered {how_long}: {tried}"


def reason(exc: Exception) -> str:
    """What an attempt's transport error was, in a few words (no traceback, no driver text
    beyond the system's own message)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection dropped"
    if isinstance(exc, httpx.ReadError):
        return "connection reset"
    text = str(exc).strip()
    if text.startswith("[Errno") and "]" in text:
        text = text.partition("]")[2].strip()  # "[Errno 111] Connection refused"
    return (text[:1].lower() + text[1:80]) or type(exc).__name__


def _backoff(rounds: int) -> float:
    return min(5.0, 0.2 * 2.0 ** min(rounds, 8)) * random.uniform(0.5, 1.5)  # noqa: S311 - jitter
