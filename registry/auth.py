"""Credentials for registries, and the two ways registries ask for them.

Where credentials come from is the caller's choice (envctl's settings read
`ENVCTL_{WORKSPACE,GLOBAL}_REGISTRY_USERNAME/_PASSWORD`, else the Docker config file's entry for
that host, via `docker_config_credentials`); this module only uses what it is handed.

A registry that wants credentials answers 401 with `WWW-Authenticate`:

- `Basic realm=…`: the username and password go with every request to that host;
- `Bearer realm=…,service=…,scope=…` (Docker Hub, GHCR, ACR, Harbor, distribution's token
  auth): a token for the scope comes from the realm (with the credentials, or anonymously when
  there are none) and goes with the requests; tokens are kept per (realm, service, scope) until
  their `expires_in` runs out.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from registry.errors import RegistryAuthError, RegistryError

# One item of a challenge header: a scheme (a bare token) or a parameter, key=value or
# key="value with , and \" inside" (a realm URL may hold commas).
_CHALLENGE_ITEM = re.compile(r'([\w!#$%&\'*+.^`|~-]+)(\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*)))?')
# Docker Hub: images say docker.io, its API is registry-1.docker.io, its config key index.docker.io.
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_DOCKER_HUB_KEY = "index.docker.io"
_DEFAULT_EXPIRES_IN = 60  # seconds, when a token service does not say (distribution's token spec)
_EXPIRY_MARGIN = 10  # seconds: a token about to expire could lapse on its way to the registry


@dataclass(frozen=True)
class Credentials:
    """A username and password (or token) for one registry; `identity_token` is an OAuth2
    refresh token (what `docker login` stores as `identitytoken` for ACR and others)."""

    username: str
    password: str
    identity_token: str | None = None

    def __repr__(self) -> str:  # never print a secret
        token = ", identity_token=***" if self.identity_token else ""
        return f"Credentials(username={self.username!r}, password=***{token})"


CredentialSource = Callable[[str], Credentials | None]
"""Credentials for a registry host (`HOST[:PORT]`), or None to go anonymously."""


def docker_config_credentials(
    host: str, config_dir: str | Path | None = None
) -> Credentials | None:
    """The credentials `docker login` stored for `host` in `config.json`, or None.

    The file is `CONFIG_DIR/config.json`, else `$DOCKER_CONFIG/config.json`, else
    `~/.docker/config.json`. Entries of `auths` may hold `auth` (base64 `user:password`),
    `username`/`password`, and `identitytoken` (used as a refresh token). Keys may be bare hosts or
    URLs (`https://index.docker.io/v1/`). Credential helpers (`credHelpers`, `credsStore`) are
    NOT executed: running programs named by a config file is not this library's call, so hosts
    served by a helper get None here and need explicit credentials. A file that exists but cannot
    be read or parsed raises RegistryAuthError rather than silently going anonymous.
    """
    directory = Path(config_dir or os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    path = directory / "config.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryAuthError(
            f"cannot read Docker config ({exc.strerror})", endpoint=str(path)
        ) from None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise RegistryAuthError(f"Docker config is not JSON ({exc})", endpoint=str(path)) from None
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return None
    wanted = _config_key(host)
    for key, entry in auths.items():
        if isinstance(entry, dict) and _config_key(str(key)) == wanted:
            return _entry_credentials(entry, path)
    return None


def _config_key(name: str) -> str:
    """`https://Host:5000/v1/` → `host:5000`; Docker Hub's aliases → one name."""
    netloc = urlsplit(name).netloc if "://" in name else name.split("/", 1)[0]
    netloc = netloc.lower()
    return _DOCKER_HUB_KEY if netloc in _DOCKER_HUB_HOSTS else netloc


def _entry_credentials(entry: dict[str, object], path: Path) -> Credentials | None:
    username = str(entry.get("username") or "")
    password = str(entry.get("password") or "")
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise RegistryAuthError(
                "Docker config has a malformed auth entry", endpoint=str(path)
            ) from None
        username, _, password = decoded.partition(":")
    token = entry.get("identitytoken")
    identity_token = token if isinstance(token, str) and token else None
    if not username and not password and identity_token is None:
        return None  # an empty entry: what `docker login` leaves when a helper holds the secret
    return Credentials(username, password, identity_token)


@dataclass(frozen=True)
class Challenge:
    """What a registry's `WWW-Authenticate` asks for: `basic` or `bearer`, and its parameters."""

    scheme: str
    params: dict[str, str]

    @classmethod
    def from_response(cls, response: httpx.Response) -> Challenge | None:
        """The challenge of a 401 (Bearer preferred when a registry offers both), or None."""
        found = [
            c for h in response.headers.get_list("www-authenticate") for c in parse_challenges(h)
        ]
        for scheme in ("bearer", "basic"):
            for challenge in found:
                if challenge.scheme == scheme:
                    return challenge
        return None


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in one `WWW-Authenticate` value (RFC 7235: `Scheme k=v, k="v", Other …`)."""
    challenges: list[Challenge] = []
    for match in _CHALLENGE_ITEM.finditer(header):
        name, assigned, quoted, bare = match.groups()
        if assigned is None:  # a bare token starts the next challenge
            challenges.append(Challenge(name.lower(), {}))
        elif challenges:
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
            challenges[-1].params[name.lower()] = value
    return challenges


def repository_scope(repository: str, *actions: str) -> str:
    """`repository:NAME:a,b` (actions sorted, so equal scopes are equal strings)."""
    return f"repository:{repository}:{','.join(sorted(set(actions)))}"


def _merge_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """Scopes with the same resource joined: `repository:x:pull` + `repository:x:push` → one."""
    actions: dict[str, set[str]] = {}
    for scope in scopes:
        resource, _, wanted = scope.rpartition(":")
        if not resource:  # not `type:name:actions`: pass it through untouched
            actions.setdefault(scope, set())
            continue
        actions.setdefault(resource, set()).update(a for a in wanted.split(",") if a)
    return frozenset(f"{r}:{','.join(sorted(a))}" if a else r for r, a in actions.items())


Send = Callable[..., httpx.Response]
"""How the authenticator reaches a token service: RegistryClient's retrying request."""


@dataclass
class _Token:
    value: str
    valid_until: float


class Authenticator:
    """Authorization headers for requests to registries: remembers each host's challenge (so
    later requests authenticate up front, without a 401 first) and caches bearer tokens per
    (realm, service, scope) until they expire. Thread-safe."""

    def __init__(
        self,
        credentials: CredentialSource,
        send: Send,
        may_send_secret: Callable[[str], bool],
    ) -> None:
        self._credentials = credentials
        self._send = send
        self._may_send_secret = may_send_secret
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, str, frozenset[str]], _Token] = {}
        self._lock = threading.Lock()

    def authorization(self, host: str, scopes: Iterable[str]) -> str | None:
        """The Authorization header for a request to `host` needing `scopes`, if the host is
        known to want one (a token is fetched now if none is cached)."""
        with self._lock:
            challenge = self._challenges.get(host)
        if challenge is None:
            return None
        return self._header(host, challenge, _merge_scopes(scopes), fresh=False)

    def answer(self, host: str, response: httpx.Response, scopes: Iterable[str]) -> str:
        """The Authorization header to retry with after `response` (a 401) from `host`; raises
        RegistryAuthError when there is nothing to answer the challenge with."""
        challenge = Challenge.from_response(response)
        url = str(response.request.url)
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            raise RegistryAuthError(
                f"registry {host} refused the request without a usable challenge",
                endpoint=url,
                status=response.status_code,
            )
        with self._lock:
            self._challenges[host] = challenge
        wanted = set(scopes)
        wanted.update(challenge.params.get("scope", "").split())
        return self._header(host, challenge, _merge_scopes(wanted), fresh=True, url=url)

    def denied(self, host: str, response: httpx.Response) -> RegistryAuthError:
        """The error for a 401/403 that survived authentication: says whether credentials were
        sent and for which registry, never what they were."""
        credentials = self._credentials(host)
        status = response.status_code
        challenge = Challenge.from_response(response)
        if credentials is None:
            what = f"registry {host} requires credentials and none were configured for it"
        elif challenge is not None and challenge.params.get("error") == "insufficient_scope":
            scope = challenge.params.get("scope", "the resource")
            what = f"registry {host} did not grant user {credentials.username!r} {scope}"
        elif status == 403:
            what = f"registry {host} denied access to user {credentials.username!r}"
        else:
            what = f"registry {host} refused the credentials sent for user {credentials.username!r}"
        return RegistryAuthError(what, endpoint=str(response.request.url), status=status)

    def _header(
        self,
        host: str,
        challenge: Challenge,
        scopes: frozenset[str],
        *,
        fresh: bool,
        url: str | None = None,
    ) -> str:
        credentials = self._credentials(host)
        if challenge.scheme == "basic":
            if credentials is None:
                raise RegistryAuthError(
                    f"registry {host} requires credentials and none were configured for it",
                    endpoint=url or host,
                    status=401,
                )
            pair = f"{credentials.username}:{credentials.password}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryAuthError("bearer challenge without realm", endpoint=url or host)
        service = challenge.params.get("service", "")
        key = (realm, service, scopes)
        with self._lock:
            token = self._tokens.get(key)
        if fresh or token is None or token.valid_until <= time.monotonic():
            token = self._fetch_token(host, realm, service, scopes, credentials)
            with self._lock:
                self._tokens[key] = token
        return f"Bearer {token.value}"

    def _fetch_token(
        self,
        host: str,
        realm: str,
        service: str,
        scopes: frozenset[str],
        credentials: Credentials | None,
    ) -> _Token:
        if credentials is not None and not self._may_send_secret(realm):
            raise RegistryAuthError(
                f"registry {host} names a token service over plain HTTP; credentials not sent",
                endpoint=realm,
            )
        params: list[tuple[str, str]] = [("service", service)] if service else []
        params += [("scope", scope) for scope in sorted(scopes)]
        started = time.monotonic()
        if credentials is not None and credentials.identity_token:
            form = dict(params, grant_type="refresh_token", client_id="envctl")
            form["refresh_token"] = credentials.identity_token
            form["scope"] = " ".join(sorted(scopes))
            response = self._send("POST", realm, data=form)
        else:
            headers = {}
            if credentials is not None:
                pair = f"{credentials.username}:{credentials.password}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
                params.append(("account", credentials.username))
            response = self._send("GET", realm, params=params, headers=headers)
        if response.status_code in (401, 403):
            who = (
                f"the credentials for user {credentials.username!r}"
                if credentials is not None
                else "an anonymous token (no credentials were configured)"
            )
            raise RegistryAuthError(
                f"the token service of registry {host} refused {who}",
                endpoint=realm,
                status=response.status_code,
            )
        if response.status_code != 200:
            raise RegistryError(
                f"the token service of registry {host} failed",
                endpoint=realm,
                status=response.status_code,
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        value = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(value, str) or not value:
            raise RegistryAuthError(
                f"the token service of registry {host} sent no token", endpoint=realm
            )
        expires_in = body.get("expires_in", _DEFAULT_EXPIRES_IN) if isinstance(body, dict) else 0
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else _DEFAULT_EXPIRES_IN
        return _Token(value, started + lifetime - min(_EXPIRY_MARGIN, lifetime / 2))
