"""Clients that outlive a server (issue 12), against two real `envctl serve` processes on one
PostgreSQL database: ENVCTL_URL lists the service's addresses, a closed port or a proxy's
502 is passed over, a client waiting on a build whose server is killed (-9) gets the image
through the other, and with no address reachable the CLI exits 3 within the bound it was given,
naming each address. Nothing here stands in for an envctl server; the one stand-in is a proxy
answering for a server that is away."""

from __future__ import annotations

import asyncio
import http.server
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from cli import main as cli
from client.errors import RemoteError
from client.http import AsyncEnvctlClient, EnvctlClient
from client.models import BuildView, ImageView
from specio.request import request_from_file
from tests.api.server import Deployment, EnvctlServer, Tenant, postgres_database, until
from tests.conftest import Services
from tests.registry.servers import free_port
from tests.streams import Lines

ENVCTL = str(Path(sys.executable).parent / "envctl")
BUILD_SECONDS = 240.0  # bound on a build that runs twice (killed, then again elsewhere)
STEP_RUNNING = "step running"  # what the long step prints (its Dockerfile line does not)
BOUND = 2.0  # ENVCTL_UNREACHABLE_AFTER of the unreachable test
SLACK = 1.5  # beyond the bound: the last round of refused connections, the exit, a busy CPU


@dataclass
class Pair:
    """Two servers of one service, and a tenant of it."""

    deployment: Deployment
    a: EnvctlServer
    b: EnvctlServer
    tenant: Tenant

    def env(self, *urls: str) -> dict[str, str]:
        """The CLI's environment as a client of `urls`, in that order."""
        return {
            **self.deployment.env,
            "ENVCTL_URL": ",".join(urls),
            "ENVCTL_TOKEN": self.tenant.token,
            "ENVCTL_WORKSPACE": self.tenant.name,
        }

    def client(self, *urls: str) -> EnvctlClient:
        return EnvctlClient(list(urls), self.tenant.token, workspace=self.tenant.name)


@pytest.fixture(scope="module")
def pair(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("failover")
    with (
        postgres_database(services.database_url) as url,
        Deployment(services, root, database_url=url) as deployment,
    ):
        a = deployment.serve(name="a", wait=False)  # both start at once, then are waited for
        b = deployment.serve(name="b", wait=False)
        a.wait_healthy()
        b.wait_healthy()
        yield Pair(deployment, a, b, deployment.workspace("failover"))


@pytest.fixture
def running(pair: Pair) -> Pair:
    """Both servers up (a test before this one may have killed one)."""
    for server in (pair.a, pair.b):
        if server.process is None:
            server.start()
    return pair


def _spec(folder: Path, services: Services, seconds: int = 0) -> Path:
    """A spec of its own key; its one step prints STEP_RUNNING and takes `seconds`."""
    path = folder / f"env-{uuid.uuid4().hex[:8]}.yml"
    path.write_text(
        f"base_image: {services.busybox_image}\ndocker_steps: |\n"
        f"  RUN printf 'step %s\\n' running && sleep {seconds} && echo {uuid.uuid4().hex} > /n\n"
    )
    return path


@contextmanager
def away_proxy(status: int, body: bytes, content_type: str) -> Iterator[str]:
    """A proxy in front of a server that is away: every request is answered `status` with
    `body`. Its URL."""

    class Away(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815 - http.server's names

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Away)
    thread = threading.Thread(target=server.serve_forever, name="away-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_closed_port_and_a_proxy_for_an_away_server_are_passed_over(
    running: Pair, services: Services, tmp_path: Path
) -> None:
    pair = running
    closed = f"http://127.0.0.1:{free_port()}"
    spec = _spec(tmp_path, services)
    # the CLI, as a user runs it: a closed port first, a live server second
    result = subprocess.run(
        [ENVCTL, "resolve", "--json", str(spec)],
        env=pair.env(closed, pair.a.url), capture_output=True, text=True, timeout=BUILD_SECONDS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    built = ImageView.model_validate_json(result.stdout)
    assert built.source == "built"
    request = request_from_file(str(spec))
    with away_proxy(502, b"<html>bad gateway</html>", "text/html") as proxy:
        with pair.client(closed, proxy, pair.b.url, pair.a.url) as envctl:
            hit = envctl.resolve_image(request)
            assert envctl.servers.urls[envctl.servers.preferred] == pair.b.url
        assert (hit.source, hit.digest) == ("workspace", built.digest)

        async def resolve() -> ImageView:
            async with AsyncEnvctlClient(
                [proxy, closed, pair.a.url], pair.tenant.token, workspace=pair.tenant.name
            ) as envctl:
                return await envctl.resolve_image(request)

        assert asyncio.run(resolve()).digest == built.digest
    # what passing over a closed port costs a new client's first call
    firsts = []
    for _ in range(10):
        with pair.client(closed, pair.a.url) as envctl:
            started = time.monotonic()
            assert envctl.build(str(built.build_id)).status == "succeeded"
            firsts.append(time.monotonic() - started)
    print(f"first call through a closed port: median {sorted(firsts)[5] * 1000:.1f} ms")
    assert sorted(firsts)[5] < 1.0


def test_an_answer_in_envctls_own_error_body_is_not_a_reason_to_ask_another_server(
    running: Pair,
) -> None:
    """A 503 with envctl's body is the service saying a dependency is down: said at once
    (exit 3), never asked of the next address (which would answer 404 for this build)."""
    body = b'{"error": "unavailable", "kind": "unavailable", "message": "the registry is down"}'
    with (
        away_proxy(503, body, "application/json") as proxy,
        running.client(proxy, running.a.url) as envctl,
        pytest.raises(RemoteError, match="the registry is down"),
    ):
        envctl.build("0123456789abcdef")


def _owner(database_url: str, build_id: str) -> str | None:
    """The process running the build (`host:pid:id`), once one does."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT owner, status FROM builds WHERE id = :id"), {"id": build_id}
            ).first()
    finally:
        engine.dispose()
    return str(row[0]) if row is not None and row[1] == "running" and row[0] else None


class Poller:
    """An async client waiting on a build with `?wait=`, noting each answer, when it came and
    which address gave it, and when each request went to which address."""

    def __init__(self, pair: Pair, urls: list[str], build_id: str) -> None:
        self.answers: list[tuple[float, str, BuildView]] = []
        self.sent: list[tuple[float, str]] = []
        self.error: BaseException | None = None
        self._args = (pair, urls, build_id)
        self.thread = threading.Thread(target=self._run, name="poller", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self._poll())
        except BaseException as exc:  # the test reports it
            self.error = exc

    async def _poll(self) -> None:
        pair, urls, build_id = self._args
        token, name = pair.tenant.token, pair.tenant.name
        async with AsyncEnvctlClient(urls, token, workspace=name) as envctl:

            async def note(request: httpx.Request) -> None:
                self.sent.append(
                    (time.monotonic(), f"{request.url.scheme}://{request.url.netloc.decode()}")
                )

            envctl._http.event_hooks["request"].append(note)  # measuring only
            while True:
                view = await envctl.build(build_id, wait=5)
                url = envctl.servers.urls[envctl.servers.preferred]
                self.answers.append((time.monotonic(), url, view))
                if view.status in ("succeeded", "failed"):
                    return


def test_a_client_waiting_on_a_build_whose_server_is_killed_gets_it_through_another(
    running: Pair, services: Services, tmp_path: Path
) -> None:
    pair = running
    spec = _spec(tmp_path, services, seconds=15)  # long enough to kill its server under it
    with pair.client(pair.a.url, pair.b.url) as envctl:
        started = envctl.resolve(request_from_file(str(spec)))
    assert isinstance(started, BuildView), started
    build_id = started.build_id
    owner = until(
        "a server to claim the build",
        lambda: _owner(pair.deployment.database_url, build_id),
        seconds=60,
    )
    pids = {server.process.pid: server for server in (pair.a, pair.b) if server.process}
    builder = pids[int(owner.split(":")[1])]
    other = pair.b if builder is pair.a else pair.a
    urls = [builder.url, other.url]  # both waiters wait through the server that builds
    follower = subprocess.Popen(
        [ENVCTL, "resolve", "--json", str(spec)],
        env=pair.env(*urls), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        assert follower.stderr is not None
        out, err = Lines(follower.stdout), Lines(follower.stderr)
        poller = Poller(pair, urls, build_id)
        assert err.wait_for(STEP_RUNNING, timeout=60), err.text()  # following the log
        until("the poller's first answer", lambda: poller.answers or None, seconds=30)
        assert poller.answers[0][1] == builder.url
        assert _owner(pair.deployment.database_url, build_id) == owner, "mid-build"
        killed = time.monotonic()
        builder.kill()
        follower.wait(timeout=BUILD_SECONDS)
        exited = time.monotonic()
        poller.thread.join(timeout=BUILD_SECONDS)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert poller.error is None, repr(poller.error)
    stderr = err.text()
    assert follower.returncode == 0, stderr
    assert "Traceback" not in stderr
    image = ImageView.model_validate_json(out.text())
    assert (image.build_id, image.source) == (build_id, "built")
    assert "queued again" in stderr, stderr  # the other server ran it again
    last = poller.answers[-1]
    assert (last[1], last[2].status, last[2].digest) == (other.url, "succeeded", image.digest)
    with pair.client(other.url) as envctl:
        assert envctl.build(build_id).attempts == 2
    # the poll in flight at the kill went to the other server at once (which then held it)
    resent = next(at for at, url in poller.sent if url == other.url)
    assert 0 < resent - killed < 1.0
    print(
        f"poller: its poll sent again to the other server {(resent - killed) * 1000:.0f} ms"
        f" after the kill; follower exited {exited - killed:.1f} s after it"
    )


def test_with_no_server_reachable_the_cli_exits_3_within_the_bound_naming_each_address(
    services: Services, tmp_path: Path
) -> None:
    closed = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    spec = _spec(tmp_path, services)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ENVCTL_")},
        "ENVCTL_HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "ENVCTL_URL": ",".join(closed),
        "ENVCTL_UNREACHABLE_AFTER": str(BOUND),
    }
    # the command alone, in process: the bound, plus the last round
    started = time.monotonic()
    result = CliRunner().invoke(cli.app, ["resolve", str(spec)], env=env)
    elapsed = time.monotonic() - started
    assert result.exit_code == 3, (result.stdout, result.stderr, result.exception)
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: no envctl server answered for {BOUND:g} s: "), error
    assert all(f"{url} (connection refused)" in error for url in closed), error
    assert BOUND <= elapsed < BOUND + SLACK, f"{elapsed:.2f} s"
    # as a user runs it, a new Python: it says so at once, then once more as it gives up
    started = time.monotonic()
    process = subprocess.Popen(
        [ENVCTL, "resolve", str(spec)], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    said = [(time.monotonic(), line.rstrip("\n")) for line in process.stderr]  # to its exit
    assert process.wait(timeout=60) == 3, said
    exited = time.monotonic()
    assert [line for _, line in said][-1] == error
    (notice_at, notice), _ = said
    assert notice.startswith("no envctl server answered yet: "), notice
    assert all(f"{url} (connection refused)" in notice for url in closed), notice
    assert exited - notice_at > BOUND / 2, "the first round's failure is said at once"
    print(
        f"exit 3 after {elapsed:.2f} s in process; as a new process, said after"
        f" {notice_at - started:.2f} s (imports included), exit 3 after {exited - started:.2f} s"
    )
