"""One HTTP layer for OCI distribution registries: URLs, authentication, retries, errors.

Errors are never misses. What the registry answers is the caller's to read (a 404 may be a
miss), but everything that is not an answer raises here:

    connection refused, timeout, 5xx, 429   retried (idempotent requests only, exponential
                                            backoff with jitter), then RegistryUnavailable
    401 / 403                               authenticated once (see `registry.auth`), then
                                            RegistryAuthError saying whether credentials were sent

`check` turns any other unusable answer into the matching RegistryError.
"""

from __future__ import annotations

import ipaddress
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from hashing.imageref import DEFAULT_DOMAIN
from registry.auth import Authenticator, Credentials, CredentialSource
from registry.errors import ImageNotFound, RegistryError, RegistryUnavailable

# Docker Hub serves its API on another host than the name images carry.
_DOCKER_HUB_API = "registry-1.docker.io"
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


def registry_base_url(domain: str, insecure: Iterable[str] = ()) -> str:
    """`http://` for loopback registries and the ones configured insecure, else `https://`."""
    host = _DOCKER_HUB_API if domain == DEFAULT_DOMAIN else domain
    return ("http://" if domain in set(insecure) or is_loopback(domain) else "https://") + host


def is_loopback(domain: str) -> bool:
    """True for `localhost[:port]`, `127.x.y.z[:port]` and `[::1][:port]`."""
    host = domain.rsplit(":", 1)[0] if not domain.endswith("]") else domain
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried: `retries` after the first
    attempt, waiting `backoff` seconds, doubling up to `max_backoff`, each wait jittered ±50%
    so that many clients failing together do not retry together."""

    retries: int = 2
    backoff: float = 0.1
    max_backoff: float = 2.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based); a server's
        Retry-After is honoured up to `max_backoff`."""
        base = min(self.max_backoff, self.backoff * 2.0**attempt)
        if retry_after is not None:
            base = min(self.max_backoff, max(base, retry_after))
        jitter: float = random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not cryptography
        return base * jitter


DEFAULT_RETRIES = RetryPolicy()


# Keep alive every connection the pool opens. With httpx's default (20 kept alive of 100),
# more concurrent callers than that make httpcore 1.0 hand out a connection it is closing
# (encode/httpcore#1110): transport errors and stalls until the timeout. bench/lookup measured
# 64 threads: no errors with this pool, retried errors and 10 s stalls without.
POOL_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)


class RegistryClient:
    """HTTP for registries over one shared, thread-safe httpx.Client.

    `credentials` is one `Credentials` for every host, or a function from host to credentials
    (None: anonymous). `insecure` hosts are reached over plain HTTP, as loopback ones always are.
    """

    def __init__(
        self,
        *,
        credentials: Credentials | CredentialSource | None = None,
        insecure: Iterable[str] = (),
        timeout: float = 10.0,
        retries: int | RetryPolicy = DEFAULT_RETRIES,
        client: httpx.Client | None = None,
    ) -> None:
        self._insecure = frozenset(insecure)
        self._policy = retries if isinstance(retries, RetryPolicy) else RetryPolicy(retries)
        self._owns_client = client is None
        self._client = client or httpx.Client(timeout=timeout, limits=POOL_LIMITS)
        source: CredentialSource
        if credentials is None or isinstance(credentials, Credentials):
            source = _constant(credentials)
        else:
            source = credentials
        self._auth = Authenticator(source, self._token_request, self._may_send_secret)

    def base_url(self, host: str) -> str:
        """`http(s)://HOST[:PORT]` of a registry (Docker Hub's API host for `docker.io`)."""
        return registry_base_url(host, self._insecure)

    def request(
        self,
        method: str,
        url: str,
        *,
        scopes: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        stream: bool = False,
        follow_redirects: bool = False,
        retry: bool | None = None,
    ) -> httpx.Response:
        """Send one request, authenticated for `scopes` (`repository:NAME:pull,push`).

        Transient failures are retried when `retry` (default: the method is idempotent and the
        body can be sent again), then raise RegistryUnavailable; a refused request raises
        RegistryAuthError. Any other answer is returned; with `stream` the caller closes it.
        """
        scopes = tuple(scopes)
        replayable = not isinstance(content, Iterator)
        retry = (method in _IDEMPOTENT and replayable) if retry is None else retry and replayable
        host = urlsplit(url).netloc
        wanted: dict[str, Any] = {
            "headers": dict(headers or {}),
            "params": params,
            "content": content,
            "stream": stream,
            "follow_redirects": follow_redirects,
        }
        authorization = self._auth.authorization(host, scopes)
        response = self._send(method, url, authorization, retry=retry, **wanted)
        if response.status_code == 401 and replayable:
            response.close()
            authorization = self._auth.answer(host, response, scopes)
            response = self._send(method, url, authorization, retry=retry, **wanted)
        if response.status_code in (401, 403):
            response.close()
            raise self._auth.denied(host, response)
        return response

    def iter_bytes(self, response: httpx.Response) -> Iterator[bytes]:
        """The body of a streamed response; a connection lost midway raises RegistryUnavailable."""
        try:
            yield from response.iter_bytes()
        except httpx.TransportError as exc:
            raise RegistryUnavailable(
                f"connection lost while reading ({type(exc).__name__})",
                endpoint=str(response.request.url),
            ) from exc

    def close(self) -> None:
        """Close the HTTP connections (of a client this object made)."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _send(
        self,
        method: str,
        url: str,
        authorization: str | None,
        *,
        retry: bool,
        headers: dict[str, str],
        stream: bool = False,
        follow_redirects: bool = False,
        **options: Any,
    ) -> httpx.Response:
        if authorization is not None:
            headers = {**headers, "Authorization": authorization}
        attempts = self._policy.retries + 1 if retry else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                request = self._client.build_request(method, url, headers=headers, **options)
                response = self._client.send(
                    request, stream=stream, follow_redirects=follow_redirects
                )
            except httpx.TransportError as exc:
                if last:
                    what = "timed out" if isinstance(exc, httpx.TimeoutException) else "unreachable"
                    raise RegistryUnavailable(
                        f"registry {urlsplit(url).netloc} {what} after {_attempts(attempt)} "
                        f"({type(exc).__name__}: {exc})",
                        endpoint=url,
                    ) from exc
                time.sleep(self._policy.delay(attempt))
                continue
            status = response.status_code
            if status < 500 and status != 429:
                return response
            detail = _error_detail(response)  # read before closing: error bodies are small
            response.close()
            if last:
                raise RegistryUnavailable(
                    f"registry {urlsplit(url).netloc} failed after {_attempts(attempt)}{detail}",
                    endpoint=url,
                    status=status,
                )
            time.sleep(self._policy.delay(attempt, _retry_after(response)))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _token_request(self, method: str, url: str, **options: Any) -> httpx.Response:
        """A request to a token service: retried like any other, never authenticated itself."""
        headers = dict(options.pop("headers", None) or {})
        return self._send(method, url, None, retry=True, headers=headers, **options)

    def _may_send_secret(self, url: str) -> bool:
        """Credentials go over TLS, or to loopback and hosts the user declared insecure."""
        parts = urlsplit(url)
        return (
            parts.scheme == "https" or is_loopback(parts.netloc) or parts.netloc in self._insecure
        )


def check(response: httpx.Response, message: str) -> None:
    """Raise the RegistryError that an unusable answer means (404 → ImageNotFound); return
    quietly on 2xx. The registry's own error codes are part of the message."""
    status = response.status_code
    if status < 300:
        return
    url = str(response.request.url)
    if status == 404:
        raise ImageNotFound(f"{message}{_error_detail(response)}", endpoint=url, status=status)
    if status >= 500 or status == 429:
        raise RegistryUnavailable(
            f"{message}{_error_detail(response)}", endpoint=url, status=status
        )
    raise RegistryError(f"{message}{_error_detail(response)}", endpoint=url, status=status)


def _error_detail(response: httpx.Response) -> str:
    """`: CODE message; …` from a distribution error body, or nothing."""
    try:
        if not response.is_stream_consumed:
            response.read()
        errors = response.json().get("errors")
    except (ValueError, AttributeError, httpx.HTTPError, httpx.StreamError):
        return ""
    if not isinstance(errors, list):
        return ""
    parts = [
        f"{e.get('code', '?')} {e.get('message', '')}".strip()
        for e in errors
        if isinstance(e, dict)
    ]
    return (": " + "; ".join(parts)) if parts else ""


def _attempts(attempt: int) -> str:
    return "1 attempt" if attempt == 0 else f"{attempt + 1} attempts"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None  # the HTTP-date form is not worth parsing


def _constant(credentials: Credentials | None) -> Callable[[str], Credentials | None]:
    return lambda _host: credentials
