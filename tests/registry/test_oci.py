"""What is specific to OciRegistry: addresses, cross-repository mounts, tag pages, retries.

The contract (tests/registry/test_contract.py) covers the behaviour every registry shares. Here
every test uses the real loopback registries in a namespace of its own; where a registry must
misbehave (5xx, pages), a small real HTTP server on loopback (`Front`, from
tests/registry/servers.py) stands in front of the real one.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from hashing import EnvKey
from registry.base import Descriptor
from registry.errors import RegistryError, RegistryUnavailable
from registry.http import RetryPolicy
from registry.oci import BUFFERED_BLOB_SIZE, InvalidRegistryAddress, OciRegistry, parse_address
from tests.conftest import Services
from tests.registry.images import layer_of, push_image
from tests.registry.servers import Front, free_port, reply

FAST = RetryPolicy(retries=2, backoff=0.01)
EMPTY = Descriptor(
    "application/vnd.oci.empty.v1+json",
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    2,
)
Calls = list[tuple[str, str, int]]


def _key() -> EnvKey:
    return EnvKey(uuid.uuid4().hex)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _recording() -> tuple[httpx.Client, Calls]:
    """An httpx client that records (method, path?query, status) of every response."""
    calls: Calls = []

    def record(response: httpx.Response) -> None:
        url = response.request.url
        calls.append((response.request.method, url.raw_path.decode(), response.status_code))

    return httpx.Client(event_hooks={"response": [record]}), calls


@pytest.fixture
def namespace() -> str:
    return f"oci-{uuid.uuid4().hex[:12]}"


# -- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "host", "namespace", "reference"),
    [
        ("127.0.0.1:5002/ws", "127.0.0.1:5002", "ws", "127.0.0.1:5002/ws/env:T"),
        (
            "Registry.Example/a/b-c/d_e",
            "registry.example",
            "a/b-c/d_e",
            "registry.example/a/b-c/d_e/env:T",
        ),
        ("[::1]:5000/x/", "[::1]:5000", "x", "[::1]:5000/x/env:T"),
        ("localhost:5000", "localhost:5000", "", "localhost:5000/env:T"),
    ],
)
def test_addresses_parse(address: str, host: str, namespace: str, reference: str) -> None:
    assert parse_address(address) == (host, namespace)
    registry = OciRegistry(address)
    assert registry.reference("T") == reference
    assert registry.address == (f"{host}/{namespace}" if namespace else host)
    assert registry.reference("sha256:" + "a" * 64).endswith("/env@sha256:" + "a" * 64)
    registry.close()


@pytest.mark.parametrize(
    "address",
    [
        "",
        "http://127.0.0.1:5002/ns",
        "host/UPPER",
        "host/ns:tag",
        "host/a//b",
        "host/-a",
        "host:99999/ns",
        "ho st/ns",
        "host/" + "a" * 260,
    ],
)
def test_bad_addresses_are_refused_before_any_request(address: str) -> None:
    with pytest.raises(InvalidRegistryAddress, match="invalid registry address"):
        OciRegistry(address)
    assert issubclass(InvalidRegistryAddress, ValueError)


# -- cross-repository mounts ---------------------------------------------------------------------


def test_a_copy_within_one_registry_mounts_instead_of_streaming(
    services: Services, namespace: str
) -> None:
    client, calls = _recording()
    source = OciRegistry(f"{services.workspace_registry}/{namespace}-src")
    target = OciRegistry(f"{services.workspace_registry}/{namespace}-dst", client=client)
    with client, source, target:
        key = _key()
        manifest = push_image(source, key)
        assert target.copy_from(source, key).digest == manifest.digest
    mounts = [c for c in calls if c[0] == "POST" and "mount=" in c[1]]
    assert [status for *_, status in mounts] == [201, 201], "config and layer both linked"
    assert not [c for c in calls if c[0] == "PUT" and "/blobs/uploads/" in c[1]], "no bytes moved"


def test_a_mount_of_a_blob_the_source_lacks_is_cancelled(
    services: Services, namespace: str
) -> None:
    client, calls = _recording()
    source = OciRegistry(f"{services.workspace_registry}/{namespace}-src")
    target = OciRegistry(f"{services.workspace_registry}/{namespace}-dst", client=client)
    with client, source, target:
        layer = layer_of(push_image(source, None))
        missing = Descriptor(layer.media_type, "sha256:" + "0" * 64, 1)
        assert target.mount_blob(missing, source) is False
        # the registry opened an upload session instead (202), which is cancelled (204)
        assert [(c[0], c[2]) for c in calls][-2:] == [("POST", 202), ("DELETE", 204)]
        assert not target.has_blob(missing.digest)


def test_no_mount_is_tried_across_registries(services: Services, namespace: str) -> None:
    client, calls = _recording()
    source = OciRegistry(f"{services.global_registry}/{namespace}")
    target = OciRegistry(f"{services.workspace_registry}/{namespace}", client=client)
    with client, source, target:
        key = _key()
        manifest = push_image(source, key)
        assert target.copy_from(source, key).digest == manifest.digest
    assert not [c for c in calls if "mount=" in c[1]]
    assert len([c for c in calls if c[0] == "PUT" and "/blobs/uploads/" in c[1]]) == 2


# -- large blobs stream ---------------------------------------------------------------------------


def _large() -> tuple[Descriptor, bytes]:
    data = os.urandom(BUFFERED_BLOB_SIZE + 1_000_000)
    return Descriptor("application/octet-stream", _digest(data), len(data)), data


def _chunks(data: bytes, fail_at: int | None = None) -> Iterator[bytes]:
    for start in range(0, len(data), 256 * 1024):
        if fail_at is not None and start >= fail_at:
            raise OSError("source went away")
        yield data[start : start + 256 * 1024]


def test_a_large_blob_streams_up_and_down(services: Services, namespace: str) -> None:
    descriptor, data = _large()
    with OciRegistry(f"{services.workspace_registry}/{namespace}") as registry:
        registry.put_blob(descriptor, _chunks(data))
        with registry.read_blob(descriptor) as chunks:
            assert _digest(b"".join(chunks)) == descriptor.digest


@pytest.mark.parametrize("damage", ["source fails", "bytes differ"])
def test_a_large_blob_that_goes_wrong_midway_keeps_nothing(
    services: Services, namespace: str, damage: str
) -> None:
    descriptor, data = _large()
    client, calls = _recording()
    with (
        client,
        OciRegistry(f"{services.workspace_registry}/{namespace}", client=client) as registry,
    ):
        if damage == "source fails":
            with pytest.raises(OSError, match="source went away"):
                registry.put_blob(descriptor, _chunks(data, fail_at=len(data) // 2))
        else:
            with pytest.raises(RegistryError, match="arrived corrupt"):
                registry.put_blob(descriptor, _chunks(data[:-1] + b"!"))
        assert not registry.has_blob(descriptor.digest)
    assert [c[0] for c in calls][:2] == ["POST", "DELETE"], "no PUT completed; session cancelled"


# -- tags ----------------------------------------------------------------------------------------


def test_distribution_2_8_lists_every_tag_at_once(services: Services, namespace: str) -> None:
    """It ignores `n`: no Link header, whatever page size is asked for."""
    with OciRegistry(f"{services.workspace_registry}/{namespace}") as registry:
        manifest = push_image(registry, "t0")
        for tag in ("t1", "t2", "t3", "t4"):
            registry.put_manifest(tag, manifest)
        assert sorted(registry.tags(page_size=2)) == ["t0", "t1", "t2", "t3", "t4"]


# -- a real HTTP server in front of the real registry ----------------------------------------------


@pytest.mark.parametrize("operation", ["lookup", "tags"])
def test_a_5xx_is_retried_then_raises_unavailable(operation: str) -> None:
    body = b'{"errors":[{"code":"UNAVAILABLE","message":"overloaded"}]}'
    with Front(lambda h: reply(h, 503, body, {"Content-Type": "application/json"})) as front:
        registry = OciRegistry(f"{front.host}/ns", retries=FAST)
        with registry, pytest.raises(RegistryUnavailable) as info:
            registry.lookup(_key()) if operation == "lookup" else registry.tags()
    assert front.requests == 3
    assert info.value.status == 503
    assert "failed after 3 attempts" in str(info.value)
    if operation == "tags":  # a HEAD has no body: only a GET can carry the registry's reason
        assert "UNAVAILABLE overloaded" in str(info.value)


def test_transient_5xx_are_survived(services: Services, namespace: str) -> None:
    """A front that fails the first request of each kind with 502, and passes everything else
    to the real registry: retries (and a blob upload restarted from its POST) carry the work."""
    upstream = httpx.Client(base_url=f"http://{services.workspace_registry.split('/')[0]}")
    failed: list[tuple[str, str]] = []

    def flaky(handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        data = handler.rfile.read(length) if length else b""
        path = urlsplit(handler.path).path
        kind = (handler.command, "uploads" if "/blobs/uploads/" in path else path.split("/")[-2])
        if kind not in failed:
            failed.append(kind)
            return reply(handler, 502, b"", {})
        skip = ("host", "content-length", "transfer-encoding")
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in skip}
        answer = upstream.request(handler.command, handler.path, headers=headers, content=data)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in (*skip, "location")}
        if "location" in answer.headers:  # relative, so that the session goes through the front
            location = urlsplit(answer.headers["location"])
            kept["Location"] = location._replace(scheme="", netloc="").geturl()
        reply(handler, answer.status_code, answer.content, kept)

    with (
        upstream,
        Front(flaky) as front,
        OciRegistry(f"{front.host}/{namespace}", retries=FAST) as registry,
    ):
        key = _key()
        manifest = push_image(registry, key)
        hit = registry.lookup(key)
    assert hit is not None
    assert hit.digest == manifest.digest
    assert sorted(failed) == [
        ("DELETE", "uploads"),  # cancelling the session spoiled by the failed PUT
        ("HEAD", "manifests"),
        ("POST", "uploads"),
        ("PUT", "manifests"),
        ("PUT", "uploads"),
    ]


def test_tag_pages_are_followed(services: Services, namespace: str) -> None:
    """distribution 2.8 does not paginate (see above); GHCR and Harbor do. A front that splits
    the real registry's list into pages of `n` with `Link: <…>; rel="next"` stands in for them."""
    upstream = f"http://{services.workspace_registry.split('/')[0]}"
    pages: list[str] = []

    def paginate(handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        pages.append(parts.query)
        every = sorted(httpx.get(upstream + parts.path).json()["tags"])
        start = every.index(query["last"]) + 1 if "last" in query else 0
        size = int(query.get("n", "100"))
        body = {"name": parts.path.split("/v2/")[1], "tags": every[start : start + size]}
        headers = {"Content-Type": "application/json"}
        if start + size < len(every):
            last = every[start + size - 1]
            headers["Link"] = f'<{parts.path}?n={size}&last={last}>; rel="next"'
        reply(handler, 200, httpx.Response(200, json=body).content, headers)

    with OciRegistry(f"{services.workspace_registry}/{namespace}") as writer:
        manifest = push_image(writer, "t0")
        for tag in ("t1", "t2", "t3", "t4"):
            writer.put_manifest(tag, manifest)
    prefix = services.workspace_registry.split("/", 1)[1]
    with Front(paginate) as front, OciRegistry(f"{front.host}/{prefix}/{namespace}") as registry:
        assert registry.tags(page_size=2) == ["t0", "t1", "t2", "t3", "t4"]
    assert pages == ["n=2", "n=2&last=t1", "n=2&last=t3"]


# -- unreachable ---------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["lookup", "tags", "has_blob", "put_blob"])
def test_a_closed_port_raises_unavailable_after_retries(operation: str) -> None:
    registry = OciRegistry(f"127.0.0.1:{free_port()}/ns", retries=FAST)
    calls: dict[str, Callable[[], object]] = {
        "lookup": lambda: registry.lookup(_key()),
        "tags": registry.tags,
        "has_blob": lambda: registry.has_blob(EMPTY.digest),
        "put_blob": lambda: registry.put_blob(EMPTY, iter([b"{}"])),
    }
    with registry, pytest.raises(RegistryUnavailable) as info:
        calls[operation]()
    assert "unreachable after 3 attempts" in str(info.value)
    assert info.value.endpoint.startswith("http://127.0.0.1:")
