"""The service end to end: real `envctl serve` processes over real HTTP, with the real engine,
registries, channel and database (SQLite, and PostgreSQL shared by two processes).

Most tests share one server (it takes seconds to start) and each makes workspaces of its own,
whose registry namespaces are new, and waits for the builds it starts; tests that kill a server
or need one configured their own way start their own.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from api.app import create_app
from client.errors import NotFound, Unauthorized
from client.http import AsyncEnvctlClient, EnvctlClient
from client.models import BuildView, ImageView, LogEventView
from registry.oci import OciRegistry
from service.settings import Settings
from specio.request import ResolveRequest, request_from_file
from tests.api.server import Deployment, EnvctlServer, Tenant, postgres_database, until
from tests.conftest import Services
from tests.registry.servers import free_port

BUILD_SECONDS = 90.0  # bound on any one small build here (they take about a second)


@dataclass(frozen=True)
class Shared:
    """The module's deployment and its one server."""

    deployment: Deployment
    server: EnvctlServer

    def tenant(self, name: str, *, registry: str | None = None) -> Tenant:
        """A new workspace (a unique name: a registry namespace no other test has used)."""
        return self.deployment.workspace(f"{name}-{uuid.uuid4().hex[:8]}", registry=registry)


# Per workspace, so that one test's full queue holds up no other test's builds.
# Tokens are not cached (ENVCTL_TOKEN_TTL=0), so a revocation shows at once.
SHARED_LIMITS = {"ENVCTL_MAX_RUNNING": "1", "ENVCTL_MAX_QUEUED": "1", "ENVCTL_TOKEN_TTL": "0"}


@pytest.fixture(scope="module")
def shared(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """One SQLite deployment and one server (two workers; per workspace one build running
    and one queued at most) for the tests that need nothing else."""
    root = tmp_path_factory.mktemp("shared")
    with Deployment(services, root, env=SHARED_LIMITS) as deployment:
        yield Shared(deployment, deployment.serve())


@pytest.fixture
def deployment(services: Services, tmp_path: Path) -> Iterator[Deployment]:
    """A deployment of the test's own (SQLite database, registry namespaces), no server yet."""
    with Deployment(services, tmp_path / "deployment") as d:
        yield d


# helpers
def _spec(services: Services, steps: str = "") -> ResolveRequest:
    """A small envctl spec on the busybox base, new (its own key) on every call."""
    body = f"RUN echo {uuid.uuid4().hex} > /nonce\n{steps}".strip()
    return ResolveRequest(spec={"base_image": services.busybox_image, "docker_steps": body})


def _http(server: EnvctlServer, tenant: Tenant | None = None) -> httpx.Client:
    """A client that keeps its connections alive, as a runner's does."""
    headers = {"Authorization": f"Bearer {tenant.token}"} if tenant else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60.0, trust_env=False)


def _ws(tenant: Tenant, path: str) -> str:
    return f"/v1/workspaces/{tenant.name}{path}"


def _body(request: ResolveRequest) -> dict[str, Any]:
    return request.model_dump(mode="json", exclude_defaults=True)


def _done(http: httpx.Client, tenant: Tenant, build_id: str) -> dict[str, Any]:
    """Poll GET build (each call long-polls up to 5 s on the server) until it is over."""

    def over() -> dict[str, Any] | None:
        answer = http.get(_ws(tenant, f"/builds/{build_id}"), params={"wait": 5})
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body if body["status"] in ("succeeded", "failed") else None

    return until(f"build {build_id} to finish", over, seconds=BUILD_SECONDS)


def _events(
    http: httpx.Client, tenant: Tenant, build_id: str, *, after: int = 0, take: int | None = None
) -> list[tuple[str, str]]:
    """(event, data) of a build's log stream from after `after`; stops after `take` log events
    (dropping the connection) or at `end`."""
    headers = {"Last-Event-ID": str(after)} if after else {}
    seen: list[tuple[str, str]] = []
    with connect_sse(http, "GET", _ws(tenant, f"/builds/{build_id}/logs"), headers=headers) as s:
        assert s.response.status_code == 200, s.response.read()
        for sse in s.iter_sse():
            if sse.event not in ("log", "end"):
                continue
            if sse.event == "log":
                assert sse.id == str(json.loads(sse.data)["seq"]), "the event id is the seq"
            seen.append((sse.event, sse.data))
            if sse.event == "end" or (take is not None and len(seen) == take):
                break
    return seen


def _lines(events: list[tuple[str, str]]) -> list[LogEventView]:
    return [LogEventView.model_validate_json(data) for kind, data in events if kind == "log"]


def _said(lines: list[LogEventView]) -> list[tuple[int, str, str]]:
    """What log lines say, without when they were said."""
    return [(line.seq, line.stage, line.text) for line in lines]


def _whole_log(http: httpx.Client, tenant: Tenant, build_id: str) -> list[LogEventView]:
    """The log of a finished build, read twice: the same, numbered 1..N, then one `end`."""
    first = _events(http, tenant, build_id)
    assert [kind for kind, _ in first].count("end") == 1
    assert first[-1][0] == "end"
    lines = _lines(first)
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    assert _lines(_events(http, tenant, build_id)) == lines
    return lines


def _metric(http: httpx.Client, name: str, labels: str = "") -> float:
    """The value of one sample on /metrics (0 when a labelled series has no sample yet)."""
    answer = http.get("/metrics")
    assert answer.status_code == 200, answer.text
    text = answer.text
    pattern = "^" + re.escape(name + (f"{{{labels}}}" if labels else "")) + r" (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return 0.0 if found is None else float(found.group(1))


def _tags(deployment: Deployment, tenant: Tenant) -> list[str]:
    """The image tags in a workspace's registry namespace (metadata tags left out)."""
    with OciRegistry(f"{deployment.workspace_registry}/{tenant.name}") as registry:
        return [tag for tag in registry.tags() if not tag.endswith(".meta")]


# the main flow
def test_resolve_build_poll_hit_logs_metadata_hash_and_metrics(
    shared: Shared, services: Services, tmp_path: Path
) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "greeting.txt").write_text("hello from the context\n")
    spec_file = tmp_path / "env.yml"
    spec_file.write_text(
        f"base_image: {services.busybox_image}\n"
        "conda: {dependencies: [envctl-hello]}\n"
        "context: ctx\n"
        "docker_steps: |\n"
        "  COPY greeting.txt /etc/greeting.txt\n"
        f"  RUN echo {uuid.uuid4().hex} > /nonce\n"
    )
    request = request_from_file(spec_file)
    alpha = shared.tenant("alpha")
    with _http(shared.server, alpha) as http:
        hits, builds = (
            _metric(http, "envctl_hits_total", 'tier="workspace"'),
            _metric(http, "envctl_builds_total", 'outcome="succeeded"'),
        )
        hashed = http.post("/v1/hash", json=_body(request))
        assert hashed.status_code == 200, hashed.text
        cli = json.loads(shared.deployment.envctl("hash", "--json", str(spec_file)))
        assert hashed.json()["key"] == cli[0]["key"]
        assert hashed.json()["pinned"] is True

        queued = http.post(_ws(alpha, "/resolve"), json=_body(request))
        assert queued.status_code == 202, queued.text
        build = queued.json()
        assert build["key"] == cli[0]["key"]
        assert build["status"] in ("queued", "running")

        done = _done(http, alpha, build["build_id"])
        assert done["status"] == "succeeded", done
        assert done["source"] == "built"
        assert done["running_seconds"] >= 0
        with OciRegistry(f"{shared.deployment.workspace_registry}/{alpha.name}") as registry:
            assert done["image"] == registry.reference(build["key"])

        hit = http.post(_ws(alpha, "/resolve"), json=_body(request))
        assert hit.status_code == 200, hit.text
        assert {k: v for k, v in hit.json().items() if v is not None} == {
            "key": build["key"],
            "image": done["image"],
            "digest": done["digest"],
            "source": "workspace",
        }

        texts = "\n".join(line.text for line in _whole_log(http, alpha, build["build_id"]))
        assert "installing 1 conda packages" in texts
        assert "COPY greeting.txt /etc/greeting.txt" in texts

        environment = http.get(_ws(alpha, f"/environments/{build['key']}"))
        assert environment.status_code == 200, environment.text
        metadata = environment.json()
        assert metadata["key"] == build["key"]
        assert "envctl-hello" in metadata["lock"]
        assert "COPY greeting.txt /etc/greeting.txt" in metadata["dockerfile"]
        assert metadata["facts"]["build_id"] == build["build_id"]

        assert _metric(http, "envctl_hits_total", 'tier="workspace"') == hits + 1
        assert _metric(http, "envctl_builds_total", 'outcome="succeeded"') == builds + 1
        assert _metric(http, "envctl_queue_length") >= 0
        assert "envctl_build_duration_seconds_count" in http.get("/metrics").text


def test_health_and_readiness(deployment: Deployment, shared: Shared) -> None:
    """Served: all ready. A global registry that is down: /readyz 503 naming it (in process,
    as a server configured so would only repeat the same app a few seconds later)."""
    with _http(shared.server) as http:
        health = http.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {
            "database": "ok",
            "engine": "ok",
            "workspace registry": "ok",
            "global registry": "ok",
        }
    env = {**deployment.env, "ENVCTL_GLOBAL_REGISTRY": f"127.0.0.1:{free_port()}/gone"}
    app = create_app(Settings.from_env(env))

    async def ask() -> tuple[httpx.Response, httpx.Response]:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e") as http,
        ):
            return await http.get("/readyz"), await http.get("/healthz")

    ready, health = asyncio.run(ask())
    assert ready.status_code == 503, ready.text
    assert ready.json()["global registry"].startswith("unavailable (")
    assert "/gone" not in ready.text  # no hosts or paths for an unauthenticated caller
    assert ready.json()["workspace registry"] == "ok"
    assert health.status_code == 200


def test_an_error_answer_leaves_the_connection_usable(shared: Shared) -> None:
    """Runners keep connections alive: after a 404, 422 or 401 the next request on the same
    connection is answered (the server neither drops it nor logs a crash)."""
    alpha = shared.tenant("alpha")
    with _http(shared.server, alpha) as http:
        for method, path, body, status in (
            ("GET", _ws(alpha, "/builds/0123456789abcdef"), None, 404),
            ("POST", "/v1/hash", {"spec": "bogus: 1"}, 422),
            ("GET", _ws(alpha, "/builds/x"), None, 404),
        ):
            answer = http.request(method, path, json=body)
            assert answer.status_code == status, answer.text
            assert http.get("/healthz").status_code == 200
        answer = http.get(_ws(alpha, "/builds/x"), headers={"Authorization": "Bearer x"})
        assert answer.status_code == 401
        assert http.get("/healthz").status_code == 200
    assert "Exception in ASGI application" not in shared.server.log.read_text()


# tenants
def test_two_workspaces_cannot_see_each_other_and_tokens_are_checked(
    shared: Shared, services: Services
) -> None:
    alpha, beta = shared.tenant("alpha"), shared.tenant("beta")
    request = _spec(services, "RUN true")
    server = shared.server
    with _http(server, alpha) as a, _http(server, beta) as b, _http(server) as anonymous:
        queued = a.post(_ws(alpha, "/resolve"), json=_body(request))
        assert queued.status_code == 202, queued.text
        build_id, key = queued.json()["build_id"], queued.json()["key"]
        assert _done(a, alpha, build_id)["status"] == "succeeded"

        # beta's token: 404 for everything of alpha's, by alpha's path or by its own
        for tenant in (alpha, beta):
            for path in (f"/builds/{build_id}", f"/builds/{build_id}/logs", f"/environments/{key}"):
                answer = b.get(_ws(tenant, path))
                assert answer.status_code == 404, (path, answer.text)
                assert answer.json()["error"] == "not_found"
        assert b.post(_ws(alpha, "/resolve"), json=_body(request)).status_code == 404
        # the global registry is for admin tokens only
        assert b.post("/v1/workspaces/_global/resolve", json=_body(request)).status_code == 404
        # the same 404 as for what does not exist at all
        assert a.get(_ws(alpha, "/builds/0123456789abcdef")).status_code == 404
        assert a.get("/v1/workspaces/nowhere/builds/0123456789abcdef").status_code == 404
        assert a.get(_ws(alpha, f"/environments/{'0' * 32}")).status_code == 404
        # beta's resolve of the same spec is beta's own build, not a hit on alpha's image
        own = b.post(_ws(beta, "/resolve"), json=_body(request))
        assert own.status_code == 202, own.text
        assert (own.json()["key"], own.json()["build_id"] != build_id) == (key, True)
        assert _done(b, beta, own.json()["build_id"])["status"] == "succeeded"

        # no token, another scheme, an unknown token
        for headers in ({}, {"Authorization": "Basic YTpi"}, {"Authorization": "Bearer nope"}):
            answer = anonymous.get(_ws(alpha, f"/builds/{build_id}"), headers=headers)
            assert answer.status_code == 401, (headers, answer.text)
            assert answer.json()["error"] == "unauthorized"
            assert answer.headers["WWW-Authenticate"] == "Bearer"
        # a token that worked, then was revoked
        token_id, secret = shared.deployment.token(alpha.name)
        again = {"Authorization": f"Bearer {secret}"}
        assert anonymous.get(_ws(alpha, f"/builds/{build_id}"), headers=again).status_code == 200
        shared.deployment.revoke(token_id)
        revoked = anonymous.get(_ws(alpha, f"/builds/{build_id}"), headers=again)
        assert revoked.status_code == 401, revoked.text
        # an admin token reaches every workspace
        _, admin = shared.deployment.token(None)
        answer = anonymous.get(
            _ws(alpha, f"/builds/{build_id}"), headers={"Authorization": f"Bearer {admin}"}
        )
        assert answer.status_code == 200, answer.text


# one build per key
def test_fifty_concurrent_resolves_of_one_new_spec_make_one_build(
    shared: Shared, services: Services
) -> None:
    alpha = shared.tenant("alpha")
    url = shared.server.url
    request = _spec(services, "RUN echo built once")

    async def resolve_all() -> list[ImageView | BuildView]:
        # one client (fifty connections): fifty httpx clients would only measure building
        # fifty TLS contexts
        async with AsyncEnvctlClient(url, alpha.token, workspace=alpha.name) as envctl:
            return await asyncio.gather(*(envctl.resolve(request) for _ in range(50)))

    with _http(shared.server) as http:
        before = _metric(http, "envctl_builds_total", 'outcome="succeeded"')
        answers = asyncio.run(resolve_all())
        build_ids = {a.build_id for a in answers if a.build_id is not None}
        assert len(build_ids) == 1, build_ids
        assert any(isinstance(a, BuildView) for a in answers), "the first caller queued it"
        (build_id,) = build_ids
        with EnvctlClient(url, alpha.token, workspace=alpha.name) as envctl:
            image = envctl.resolve_image(request, timeout=BUILD_SECONDS)
            build = envctl.build(build_id)
        assert (build.status, build.attempts, image.build_id) == ("succeeded", 1, build_id)
        hits = asyncio.run(resolve_all())
        assert {(a.image, a.digest, a.source) for a in hits if isinstance(a, ImageView)} == {
            (image.image, image.digest, "workspace")
        }
        assert all(isinstance(a, ImageView) for a in hits)
        assert all(a.digest == image.digest for a in answers if isinstance(a, ImageView))
        assert _tags(shared.deployment, alpha) == [image.key], "one image"
        assert _metric(http, "envctl_builds_total", 'outcome="succeeded"') == before + 1


# logs
def test_a_dropped_log_stream_resumes_with_last_event_id(
    shared: Shared, services: Services
) -> None:
    alpha = shared.tenant("alpha")
    # a step that logs for a few seconds, so that the drops and resumes happen live
    request = _spec(services, "RUN for i in $(seq 1 30); do echo line-$i; sleep 0.1; done")
    with _http(shared.server, alpha) as http:
        queued = http.post(_ws(alpha, "/resolve"), json=_body(request))
        assert queued.status_code == 202, queued.text
        build_id = queued.json()["build_id"]
        # two drops while the build runs, each after five lines, then the rest to the end
        first = _events(http, alpha, build_id, take=5)
        second = _events(http, alpha, build_id, after=_lines(first)[-1].seq, take=5)
        assert [kind for kind, _ in first + second] == ["log"] * 10
        status = http.get(_ws(alpha, f"/builds/{build_id}")).json()["status"]
        assert status == "running", "the drops happened while the build ran"
        rest = _events(http, alpha, build_id, after=_lines(second)[-1].seq)
        assert rest[-1][0] == "end"
        assert BuildView.model_validate_json(rest[-1][1]).status == "succeeded"
        resumed = _lines(first) + _lines(second) + _lines(rest)
        whole = _whole_log(http, alpha, build_id)
    assert _said(resumed) == _said(whole), "no line repeated or missed"
    assert [line.text for line in whole if re.fullmatch(r"line-\d+", line.text)] == [
        f"line-{i}" for i in range(1, 31)
    ]


def test_a_log_stream_refused_raises_the_servers_error_not_an_unread_body(
    shared: Shared,
) -> None:
    """An error answer to a log stream (unknown build, bad token) is the server's error."""
    alpha = shared.tenant("alpha")
    url = shared.server.url
    for token, error in ((alpha.token, NotFound), ("not-a-token", Unauthorized)):
        with EnvctlClient(url, token, workspace=alpha.name) as envctl, pytest.raises(error):
            list(envctl.logs("0123456789abcdef", follow=False))

    async def watch(token: str) -> None:
        async with AsyncEnvctlClient(url, token, workspace=alpha.name) as envctl:
            async for _ in envctl.logs("0123456789abcdef", follow=False):
                pass

    with pytest.raises(NotFound):
        asyncio.run(watch(alpha.token))
    with pytest.raises(Unauthorized):
        asyncio.run(watch("not-a-token"))


# restart
def test_a_server_killed_mid_build_runs_the_build_again_and_the_waiting_client_gets_it(
    deployment: Deployment, services: Services
) -> None:
    alpha = deployment.workspace("alpha")
    server = deployment.serve()
    # The slow step is the workload under test: it prints a marker its own text does not
    # contain (so the marker in the log means it runs), then takes two seconds.
    request = _spec(services, "RUN echo slow-$((6 * 7)) && sleep 2 && echo slow-done")
    received: list[LogEventView] = []
    outcome: list[ImageView | BaseException] = []

    def wait_for_image() -> None:
        try:
            with EnvctlClient(server.url, alpha.token, workspace=alpha.name) as envctl:
                outcome.append(
                    envctl.resolve_image(request, on_log=received.append, timeout=BUILD_SECONDS)
                )
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_for_image, name="waiting-client")
    waiter.start()
    until(
        "the slow step to start",
        lambda: True if any(line.text == "slow-42" for line in list(received)) else None,
        seconds=BUILD_SECONDS,
    )
    seen = list(received)
    with _http(server, alpha) as http:
        joined = http.post(_ws(alpha, "/resolve"), json=_body(request))
        assert joined.status_code == 202, joined.text
        assert joined.json()["status"] == "running"
        build_id = joined.json()["build_id"]
    server.kill()
    server.start()
    with _http(server, alpha) as http:  # a watcher that resumes as soon as the server is back
        resumed = _events(http, alpha, build_id, after=seen[-1].seq)
    waiter.join(timeout=BUILD_SECONDS * 2)
    assert not waiter.is_alive(), "the waiting client got no answer"
    (image,) = outcome
    assert isinstance(image, ImageView), image
    assert (image.build_id, image.source) == (build_id, "built")
    with _http(server, alpha) as http:
        build = http.get(_ws(alpha, f"/builds/{build_id}")).json()
        assert (build["status"], build["attempts"]) == ("succeeded", 2)
        assert build["digest"] == image.digest
        whole = _whole_log(http, alpha, build_id)
        hit = http.post(_ws(alpha, "/resolve"), json=_body(request))
        assert (hit.status_code, hit.json()["digest"]) == (200, image.digest)
    texts = [line.text for line in whole]
    assert any("queued again" in text for text in texts)
    assert texts.count("slow-done") == 1
    # what the watchers were shown across the restart: the whole log, once
    assert _said(seen + _lines(resumed)) == _said(whole)
    assert _said(received) == _said(whole)


# errors
def test_an_invalid_spec_is_422_with_the_field_and_line(shared: Shared, services: Services) -> None:
    alpha = shared.tenant("alpha")
    text = f"base_image: {services.busybox_image}\ndocker_steps: |\n  RUN true\nbogus: 1\n"
    with _http(shared.server, alpha) as http:
        for path in (_ws(alpha, "/resolve"), "/v1/hash"):
            answer = http.post(path, json={"spec": text, "name": "env.yml"})
            assert answer.status_code == 422, answer.text
            body = answer.json()
            assert (body["error"], body["source"], body["line"]) == ("invalid_spec", "env.yml", 4)
            assert "bogus" in body["field"]
        # a body that is not a ResolveRequest at all: the field it lacks
        answer = http.post(_ws(alpha, "/resolve"), json={"files": []})
        assert answer.status_code == 422, answer.text
        assert (answer.json()["error"], answer.json()["field"]) == ("invalid_request", "body.spec")
        # a docker step Docker's own parser refuses
        spec = {"base_image": services.busybox_image, "docker_steps": "RUN true\nNOTANINSTRUCTION"}
        answer = http.post(_ws(alpha, "/resolve"), json={"spec": spec})
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"] == "invalid_spec"


def test_too_many_queued_builds_is_429_with_retry_after(shared: Shared, services: Services) -> None:
    """The shared server lets a workspace run one build and queue one more."""
    alpha = shared.tenant("alpha")
    running = _spec(services, "RUN sleep 2")  # runs on while the next two are sent
    queued, refused = _spec(services), _spec(services)
    with _http(shared.server, alpha) as http:
        first = http.post(_ws(alpha, "/resolve"), json=_body(running))
        assert first.status_code == 202, first.text
        first_id = first.json()["build_id"]

        def is_running() -> bool | None:
            status = http.get(_ws(alpha, f"/builds/{first_id}")).json()["status"]
            return True if status == "running" else None

        until("the first build to run", is_running, seconds=BUILD_SECONDS)
        second = http.post(_ws(alpha, "/resolve"), json=_body(queued))
        assert second.status_code == 202, second.text
        assert (second.json()["status"], second.json()["position"]) == ("queued", 1)
        assert _metric(http, "envctl_queue_length") >= 1
        third = http.post(_ws(alpha, "/resolve"), json=_body(refused))
        assert third.status_code == 429, third.text
        assert third.json()["error"] == "queue_full"
        assert int(third.headers["Retry-After"]) > 0
        # joining the build that is already queued is not queuing one more: no 429
        joined = http.post(_ws(alpha, "/resolve"), json=_body(queued))
        assert (joined.status_code, joined.json()["build_id"]) == (202, second.json()["build_id"])
        assert _done(http, alpha, first_id)["status"] == "succeeded"
        assert _done(http, alpha, second.json()["build_id"])["status"] == "succeeded"


def test_an_unreachable_workspace_registry_is_503(shared: Shared, services: Services) -> None:
    gone = shared.tenant("gone", registry=f"127.0.0.1:{free_port()}/gone")
    with _http(shared.server, gone) as http:
        answer = http.post(_ws(gone, "/resolve"), json=_body(_spec(services)))
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "unavailable"


def test_a_body_over_the_limit_is_413(deployment: Deployment) -> None:
    """`envctl serve` has no option for the body limit (64 MiB), so this runs the app in
    process with a small one: by Content-Length, and counted for a chunked body."""
    alpha = deployment.workspace("alpha")
    app = create_app(Settings.from_env(deployment.env), body_limit=4096)
    big = json.dumps({"spec": "#" * 8192}).encode()

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 1024):
            yield big[start : start + 1024]

    @asynccontextmanager
    async def running() -> AsyncIterator[httpx.AsyncClient]:
        async with app.router.lifespan_context(app):
            headers = {"Authorization": f"Bearer {alpha.token}", "Content-Type": "application/json"}
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://envctl", headers=headers
            ) as http:
                yield http

    async def scenario() -> None:
        async with running() as http:
            for what, path, content in (
                ("resolve, by Content-Length", _ws(alpha, "/resolve"), big),
                ("hash, by Content-Length", "/v1/hash", big),
                ("resolve, chunked", _ws(alpha, "/resolve"), chunked()),
            ):
                answer = await http.post(path, content=content)
                assert answer.status_code == 413, (what, answer.status_code, answer.text)
                assert answer.json()["error"] == "body_too_large", what
            small = await http.post(_ws(alpha, "/resolve"), content=b'{"spec": "x: 1"}')
            assert small.status_code == 422, "a small body is read"

    asyncio.run(scenario())


# PostgreSQL, two processes
def test_two_servers_on_one_postgresql_database_answer_for_each_others_builds(
    services: Services, tmp_path: Path
) -> None:
    with (
        postgres_database(services.database_url) as url,
        Deployment(services, tmp_path / "pg", database_url=url) as deployment,
    ):
        alpha = deployment.workspace("alpha")
        one = deployment.serve(home=tmp_path / "home-1", wait=False)
        two = deployment.serve(home=tmp_path / "home-2", wait=False)
        one.wait_healthy()
        two.wait_healthy()
        request = _spec(services, "RUN echo shared")
        with _http(one, alpha) as first, _http(two, alpha) as second:
            queued = first.post(_ws(alpha, "/resolve"), json=_body(request))
            assert queued.status_code == 202, queued.text
            build_id = queued.json()["build_id"]
            joined = second.post(_ws(alpha, "/resolve"), json=_body(request))
            assert joined.status_code in (200, 202), joined.text
            if joined.status_code == 202:  # else the build was over already: a hit
                assert joined.json()["build_id"] == build_id, "one build across both processes"
            done = _done(second, alpha, build_id)
            assert done["status"] == "succeeded", done
            log = _whole_log(second, alpha, build_id)
            assert _whole_log(first, alpha, build_id) == log
            assert any("started by" in line.text for line in log)
            hit = second.post(_ws(alpha, "/resolve"), json=_body(request))
            assert (hit.status_code, hit.json()["digest"]) == (200, done["digest"])
            environment = second.get(_ws(alpha, f"/environments/{done['key']}"))
            assert environment.json()["facts"]["build_id"] == build_id

            # callers on both servers at once: still one build
            other = _spec(services, "RUN echo shared too")

            def resolve(http: httpx.Client) -> str:
                answer = http.post(_ws(alpha, "/resolve"), json=_body(other))
                assert answer.status_code in (200, 202), answer.text
                build: str = answer.json()["build_id"]
                return build

            results: list[str] = []
            threads = [
                threading.Thread(target=lambda h=h: results.append(resolve(h)))
                for h in (first, second) * 5
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=BUILD_SECONDS)
            assert len(results) == 10
            assert len(set(results)) == 1, results
            assert _done(first, alpha, results[0])["status"] == "succeeded"
