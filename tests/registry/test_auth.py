"""Credentials and the two challenge flows, against real distribution 2.8 processes.

Basic: a `docker-registry` with `auth: htpasswd` (bcrypt). Bearer: a `docker-registry` with
`auth: token`, trusting the certificate of a small real token service started here, which signs
RS256 JWTs (x5c header) and counts what it is asked for. The Docker config file is read from a
temporary DOCKER_CONFIG.
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
from collections.abc import Iterator
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

from hashing import EnvKey, parse_image
from registry.auth import Credentials, docker_config_credentials, parse_challenges
from registry.digests import DigestResolver
from registry.errors import RegistryAuthError
from registry.oci import OciRegistry
from tests.registry.images import push_image

SERVICE, ISSUER = "envctl-test-registry", "envctl-test-issuer"
ALICE = Credentials("alice", "correct horse")
REFRESH_TOKEN = "refresh-" + uuid.uuid4().hex


def _key() -> EnvKey:
    return EnvKey(uuid.uuid4().hex)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- real registry processes -------------------------------------------------------------------


@dataclass
class Served:
    """A registry process on loopback."""

    host: str
    process: subprocess.Popen[bytes]
    log: Path


def _serve_registry(folder: Path, auth: str) -> Iterator[Served]:
    """Start `docker-registry serve` with the given `auth:` section; stop it afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = folder / "config.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {folder / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\nauth:\n{auth}"
    )
    log = folder / "registry.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ["PATH"]},  # REGISTRY_* variables would override the config
        )
    try:
        _wait_until_answering(f"http://127.0.0.1:{port}/v2/", process, log)
        yield Served(f"127.0.0.1:{port}", process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_until_answering(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll until the URL answers anything (a 401 is an answer), 10 s at most."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"registry exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.02)  # polling interval, not a guess at readiness
    pytest.fail(f"registry at {url} did not answer in 10 s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A registry with htpasswd auth; alice is its one user."""
    folder = tmp_path_factory.mktemp("basic")
    hashed = bcrypt.hashpw(ALICE.password.encode(), bcrypt.gensalt(rounds=4))  # fast, still bcrypt
    (folder / "htpasswd").write_bytes(ALICE.username.encode() + b":" + hashed + b"\n")
    auth = f"  htpasswd:\n    realm: envctl-test\n    path: {folder / 'htpasswd'}\n"
    yield from _serve_registry(folder, auth)


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
    yield from _serve_registry(folder, auth)


@pytest.fixture
def tokens(token_service: tuple[TokenService, str]) -> Iterator[TokenService]:
    """The token service with its log cleared (and its settings restored afterwards)."""
    service = token_service[0]
    with service.lock:
        service.requests.clear()
    yield service
    service.expires_in = 300


# -- basic ---------------------------------------------------------------------------------------


def test_basic_auth_with_the_right_credentials_works(basic_registry: Served) -> None:
    with OciRegistry(f"{basic_registry.host}/basic-{uuid.uuid4().hex[:8]}", credentials=ALICE) as r:
        key = _key()
        manifest = push_image(r, key)
        assert r.lookup(key) is not None
        assert r.resolve(key).digest == manifest.digest  # type: ignore[union-attr]
        assert r.keys() == [key]


def test_basic_auth_with_a_wrong_password_says_so_without_the_secret(
    basic_registry: Served,
) -> None:
    wrong = Credentials("alice", "tr0ub4dor")
    with (
        OciRegistry(f"{basic_registry.host}/x", credentials=wrong) as r,
        pytest.raises(RegistryAuthError) as info,
    ):
        r.lookup(_key())
    message = str(info.value)
    assert (
        f"registry {basic_registry.host} refused the credentials sent for user 'alice'" in message
    )
    assert "tr0ub4dor" not in message
    assert info.value.status == 401


def test_basic_auth_without_credentials_says_none_were_configured(basic_registry: Served) -> None:
    with OciRegistry(f"{basic_registry.host}/x") as r, pytest.raises(RegistryAuthError) as info:
        r.tags()
    assert "requires credentials and none were configured" in str(info.value)
    assert basic_registry.host in str(info.value)


# -- bearer --------------------------------------------------------------------------------------


def test_bearer_flow_end_to_end_with_one_token_per_scope(
    token_registry: Served, tokens: TokenService
) -> None:
    statuses: list[int] = []
    client = httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
    namespace = f"bearer-{uuid.uuid4().hex[:8]}"
    with (
        client,
        OciRegistry(f"{token_registry.host}/{namespace}", credentials=ALICE, client=client) as r,
    ):
        keys = [_key() for _ in range(3)]
        for key in keys:
            push_image(r, key)
        assert r.keys() == sorted(keys)
        r.delete(keys[0])
        with OciRegistry(r.address, credentials=ALICE) as fresh:
            assert fresh.lookup(keys[0]) is None
    repository = f"{namespace}/env"
    asked = tokens.scopes_asked()
    assert sorted(set(asked)) == sorted(
        {
            (f"repository:{repository}:pull,push",),
            (f"repository:{repository}:pull",),
            (f"repository:{repository}:delete",),
        }
    )
    assert len(asked) == 4, "one token per scope, reused (+1 for the second registry's lookup)"
    assert statuses.count(401) == 1, "after the first challenge, requests carry their token"


def test_an_expired_token_is_fetched_again(token_registry: Served, tokens: TokenService) -> None:
    tokens.expires_in = 0
    with OciRegistry(f"{token_registry.host}/expiry", credentials=ALICE) as r:
        for _ in range(3):
            assert r.lookup(_key()) is None
    assert len(tokens.requests) == 3


def test_a_wrong_password_is_refused_by_the_token_service(
    token_registry: Served, tokens: TokenService
) -> None:
    wrong = Credentials("alice", "tr0ub4dor")
    with (
        OciRegistry(f"{token_registry.host}/x", credentials=wrong) as r,
        pytest.raises(RegistryAuthError) as info,
    ):
        r.lookup(_key())
    message = str(info.value)
    assert f"the token service of registry {token_registry.host}" in message
    assert "user 'alice'" in message
    assert "tr0ub4dor" not in message


def test_anonymous_tokens_read_public_images_and_nothing_else(
    token_registry: Served, tokens: TokenService
) -> None:
    name = f"public/base-{uuid.uuid4().hex[:8]}"
    with OciRegistry(f"{token_registry.host}/{name}", credentials=ALICE) as writer:
        manifest = push_image(writer, "v1")
    with DigestResolver() as resolver:
        pinned = resolver.resolve(parse_image(f"{token_registry.host}/{name}/env:v1"))
    assert pinned.digest == manifest.digest
    assert tokens.requests[-1]["user"] is None
    with (
        OciRegistry(f"{token_registry.host}/private") as r,
        pytest.raises(RegistryAuthError) as info,
    ):
        r.lookup(_key())
    assert "none were configured" in str(info.value)


def test_a_docker_config_identity_token_is_used_as_a_refresh_token(
    token_registry: Served, tokens: TokenService, tmp_path: Path
) -> None:
    entry = {"auth": base64.b64encode(b"<token>:").decode(), "identitytoken": REFRESH_TOKEN}
    (tmp_path / "config.json").write_text(json.dumps({"auths": {token_registry.host: entry}}))
    credentials = docker_config_credentials(token_registry.host, tmp_path)
    with OciRegistry(f"{token_registry.host}/refresh", credentials=credentials) as r:
        assert r.lookup(_key()) is None
    assert [req["method"] for req in tokens.requests] == ["POST"]


def test_a_mount_asks_for_pull_on_the_source_too(
    token_registry: Served, tokens: TokenService
) -> None:
    ns = uuid.uuid4().hex[:8]
    with (
        OciRegistry(f"{token_registry.host}/src-{ns}", credentials=ALICE) as source,
        OciRegistry(f"{token_registry.host}/dst-{ns}", credentials=ALICE) as target,
    ):
        key = _key()
        manifest = push_image(source, key)
        assert target.copy_from(source, key).digest == manifest.digest
    wanted = (f"repository:dst-{ns}/env:pull,push", f"repository:src-{ns}/env:pull")
    assert wanted in tokens.scopes_asked()


def test_threads_share_one_registry_and_its_tokens(
    token_registry: Served, tokens: TokenService
) -> None:
    with OciRegistry(f"{token_registry.host}/threads", credentials=ALICE) as r:
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(5):
                    assert r.lookup(_key()) is None
            except BaseException as exc:  # collected: a thread's failure must fail the test
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    assert 1 <= len(tokens.requests) <= 8  # at most one racing fetch per thread, then shared


# -- challenges and the Docker config file -------------------------------------------------------


def test_challenges_parse_with_quotes_and_commas() -> None:
    header = (
        'Bearer realm="https://auth.example/token?a=1,b=2",service="reg",'
        'scope="repository:a/b:pull,push repository:c:pull", Basic realm="say \\"hi\\""'
    )
    bearer, basic = parse_challenges(header)
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.example/token?a=1,b=2",
        "service": "reg",
        "scope": "repository:a/b:pull,push repository:c:pull",
    }
    assert (basic.scheme, basic.params) == ("basic", {"realm": 'say "hi"'})


def _config(folder: Path, auths: dict[str, Any], **extra: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"auths": auths, **extra}))
    return folder


def test_docker_config_auth_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _config(
        tmp_path / "docker",
        {
            "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:p:w").decode()},
            "127.0.0.1:5002": {"username": "bob", "password": "s3cret"},
            "http://Registry.Example:5000/v2/": {"auth": base64.b64encode(b"eve:x").decode()},
            "helper.example": {},
        },
        credsStore="desktop",
        credHelpers={"helped.example": "ecr-login"},
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    assert docker_config_credentials("docker.io") == Credentials("hub", "p:w")
    assert docker_config_credentials("registry-1.docker.io") == Credentials("hub", "p:w")
    assert docker_config_credentials("127.0.0.1:5002") == Credentials("bob", "s3cret")
    assert docker_config_credentials("registry.example:5000") == Credentials("eve", "x")
    assert docker_config_credentials("helper.example") is None  # the secret is in a helper
    assert docker_config_credentials("helped.example") is None  # helpers are never run
    assert docker_config_credentials("127.0.0.1:5001") is None
    other = _config(tmp_path / "other", {"127.0.0.1:5001": {"username": "x", "password": "y"}})
    assert docker_config_credentials("127.0.0.1:5001", other) == Credentials("x", "y")


def test_docker_config_missing_and_broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "absent"))
    assert docker_config_credentials("127.0.0.1:5002") is None
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    _config(tmp_path / ".docker", {"h.example": {"username": "u", "password": "p"}})
    assert docker_config_credentials("h.example") == Credentials("u", "p")
    (tmp_path / ".docker" / "config.json").write_text("{not json")
    with pytest.raises(RegistryAuthError, match="not JSON"):
        docker_config_credentials("h.example")
    _config(tmp_path / ".docker", {"h.example": {"auth": "***"}})
    with pytest.raises(RegistryAuthError, match="malformed auth"):
        docker_config_credentials("h.example")


def test_credentials_never_print_their_secrets() -> None:
    text = repr(Credentials("alice", "s3cret", identity_token="t0ken"))  # noqa: S106
    assert "alice" in text
    assert "s3cret" not in text
    assert "t0ken" not in text
