"""Credentials and the two challenge flows, against real distribution 2.8 processes.

Basic: a `docker-registry` with `auth: htpasswd` (bcrypt). Bearer: a `docker-registry` with
`auth: token`, trusting the certificate of a small real token service, which signs RS256 JWTs
(x5c header) and counts what it is asked for; both are started by tests/registry/servers.py.
The Docker config file is read from a temporary DOCKER_CONFIG.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from hashing import EnvKey, parse_image
from registry.auth import Credentials, docker_config_credentials, parse_challenges
from registry.digests import DigestResolver
from registry.errors import RegistryAuthError
from registry.oci import OciRegistry
from tests.registry.images import push_image
from tests.registry.servers import ALICE, REFRESH_TOKEN, Served, TokenService


def _key() -> EnvKey:
    return EnvKey(uuid.uuid4().hex)


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
