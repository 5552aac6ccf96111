"""Real servers for tests, and the fixtures built on them; no mocks.

- `docker-registry serve` processes (distribution 2.8) with an `auth:` section of our choosing:
  `basic_registry` (htpasswd, bcrypt; ALICE is its one user) and `token_registry` (token auth,
  trusting the certificate of `token_service`).
- `token_service`: a small token server on loopback that signs RS256 JWTs (x5c header), grants
  ALICE (password or REFRESH_TOKEN) what she asks for and anonymous callers pull on `public/…`
  only, and records every request.
- `Front`: a loopback HTTP server whose every answer a test decides (`reply` writes one), to
  stand in front of a real registry when it must misbehave.

tests/conftest.py registers this module as a plugin, so its fixtures serve every test package.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from registry.auth import Credentials

SERVICE, ISSUER = "envctl-test-registry", "envctl-test-issuer"
ALICE = Credentials("alice", "correct horse")
REFRESH_TOKEN = "refresh-" + uuid.uuid4().hex


def free_port() -> int:
    """A loopback port nothing listens on (until someone binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- real registry processes -------------------------------------------------------------------


class RegistryProcess:
    """A `docker-registry serve` of a test's own on loopback, with the `auth:` section given
    (none: anonymous), on a fixed port and storage folder: stopped and started again, it is the
    same registry. The one way the tests start a registry of their own."""

    def __init__(self, folder: Path, auth: str = "") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.host = f"127.0.0.1:{free_port()}"
        self.config = folder / "config.yml"
        self.config.write_text(
            f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {folder / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n" + (f"auth:\n{auth}" if auth else "")
        )
        self.log = folder / "registry.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the registry process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start it and wait until `/v2/` answers anything (a 401 is an answer), 10 s at most."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["docker-registry", "serve", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={"PATH": os.environ["PATH"]},  # REGISTRY_* variables would override it
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"registry exited ({self.process.returncode}): {self._tail()}")
            try:
                httpx.get(f"http://{self.host}/v2/", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.02)  # polling interval, not a guess at readiness
        self.stop()
        pytest.fail(f"registry at {self.host} did not answer in 10 s: {self._tail()}")

    def stop(self) -> None:
        """Terminate it and wait for it to exit (KILL after 10 s)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def _tail(self) -> str:
        return self.log.read_text()[-2000:]


Served = RegistryProcess  # what the auth fixtures yield: a started registry


def serve_registry(folder: Path, auth: str) -> Iterator[Served]:
    """Start a registry with the given `auth:` section; stop it afterwards."""
    registry = RegistryProcess(folder, auth)
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


def htpasswd_registry(folder: Path, user: Credentials) -> Iterator[Served]:
    """A registry with htpasswd auth whose one user is `user`."""
    folder.mkdir(parents=True, exist_ok=True)
    hashed = bcrypt.hashpw(user.password.encode(), bcrypt.gensalt(rounds=4))  # fast, still bcrypt
    (folder / "htpasswd").write_bytes(user.username.encode() + b":" + hashed + b"\n")
    auth = f"  htpasswd:\n    realm: envctl-test\n    path: {folder / 'htpasswd'}\n"
    yield from serve_registry(folder, auth)


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A registry with htpasswd auth; alice is its one user."""
    yield from htpasswd_registry(tmp_path_factory.mktemp("basic"), ALICE)


# -- a real token service ----------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenService:
    """Issues registry JWTs: alice (password or refresh token) gets what she asks for;
    anonymous callers get pull on `public/…` only. Records every request."""

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    expires_in: int = 300
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, user: str | None, scopes: list[str]) -> dict[str, Any]:
        """A signed token granting `user` (None: anonymous) its share of `scopes`."""
        access = []
        for scope in scopes:
            kind, rest = scope.split(":", 1)
            name, actions = rest.rsplit(":", 1)
            if user is not None:
                granted = actions.split(",")
            else:
                granted = ["pull"] if name.startswith("public/") and "pull" in actions else []
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user or "",
            "aud": SERVICE,
            "exp": now + 600,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return {"token": f"{signing_input}.{_b64url(signature)}", "expires_in": self.expires_in}

    def scopes_asked(self) -> list[tuple[str, ...]]:
        """The scopes of every token request so far, in order."""
        with self.lock:
            return [tuple(r["scopes"]) for r in self.requests]


def _certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, False, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def _handler(service: TokenService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            user = None
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                if (name, password) != (ALICE.username, ALICE.password):
                    return self._answer(401, {"details": "wrong username or password"})
                user = name
            self._token(user, [s for v in query.get("scope", []) for s in v.split()], "GET")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = parse_qs(self.rfile.read(length).decode())
            if form.get("grant_type") != ["refresh_token"] or form.get("refresh_token") != [
                REFRESH_TOKEN
            ]:
                return self._answer(401, {"details": "bad refresh token"})
            self._token(ALICE.username, " ".join(form.get("scope", [])).split(), "POST")

        def _token(self, user: str | None, scopes: list[str], method: str) -> None:
            with service.lock:
                service.requests.append({"user": user, "scopes": sorted(scopes), "method": method})
            self._answer(200, service.issue(user, scopes))

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: Any) -> None:  # quiet: pytest shows failures, not traffic
            pass

    return Handler


@pytest.fixture(scope="module")
def token_service() -> Iterator[tuple[TokenService, str]]:
    """The token service and its realm URL."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    service = TokenService(key, _certificate(key))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(service))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield service, f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, token_service: tuple[TokenService, str]
) -> Iterator[Served]:
    """A registry with token auth, trusting the token service's certificate."""
    service, realm = token_service
    folder = tmp_path_factory.mktemp("token")
    bundle = folder / "root.pem"
    bundle.write_bytes(service.certificate.public_bytes(serialization.Encoding.PEM))
    auth = (
        f"  token:\n    realm: {realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
        f"    rootcertbundle: {bundle}\n"
    )
    yield from serve_registry(folder, auth)


@pytest.fixture
def tokens(token_service: tuple[TokenService, str]) -> Iterator[TokenService]:
    """The token service with its log cleared (and its settings restored afterwards)."""
    service = token_service[0]
    with service.lock:
        service.requests.clear()
    yield service
    service.expires_in = 300


# -- a real HTTP server whose answers a test decides ---------------------------------------------


class Front:
    """A loopback HTTP server: `answer(handler)` decides each response; counts requests."""

    def __init__(self, answer: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.requests = 0
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                front.requests += 1
                answer(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _any  # noqa: N815

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Front:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def reply(
    handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]
) -> None:
    """Answer a Front's request: status, headers, Content-Length, and the body unless HEAD."""
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)
