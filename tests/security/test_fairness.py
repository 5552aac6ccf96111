"""One workspace's slow registry cannot delay another's requests (issue 9, item 5), through a
real `envctl serve`: workspace B sends 60 requests naming a base image on a registry that
accepts connections and never answers; meanwhile workspace A's hits, each of which must ask
its own registry for its base tag (ENVCTL_TAG_TTL=0), stay fast. The bound is the isolation
property (B's work waits on B's threads), not a benchmark."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from service.service import WORKSPACE_THREADS
from tests.api.server import Deployment, Tenant, until
from tests.conftest import Services

B_REQUESTS = 60
A_REQUESTS = 200
A_WARMUP = 20  # while B's last requests still arrive at the server
P99_SECONDS = 0.050


class BlackHole:
    """A registry address that accepts connections and never answers."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.held.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()  # every waiting request fails now instead of timing out


def _client(url: str, tenant: Tenant) -> httpx.Client:
    return httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {tenant.token}"},
        timeout=120.0, trust_env=False,
    )  # fmt: skip


def test_a_black_hole_registry_of_one_workspace_does_not_slow_anothers_hits(
    services: Services, tmp_path: Path
) -> None:
    hole = BlackHole()
    env = {
        "ENVCTL_TAG_TTL": "0",  # every hit of A asks its base tag's digest: blocking work
        "ENVCTL_ALLOWED_BASE_REGISTRIES": f"{services.base_registry},127.0.0.1:{hole.port}",
    }
    try:
        with Deployment(services, tmp_path / "deployment", env=env) as deployment:
            server = deployment.serve()
            a, b = deployment.workspace("alpha"), deployment.workspace("beta")
            spec = f"base_image: {services.busybox_image}\ndocker_steps: RUN echo {uuid.uuid4()}\n"
            body = {"spec": spec, "name": "env.yml"}
            with _client(server.url, a) as http:
                built = http.post(f"/v1/workspaces/{a.name}/resolve", json=body,
                                  params={"wait": 120})  # fmt: skip
                assert built.status_code == 200, built.text

                def stalled(n: int) -> int:
                    hostile = {"spec": f"base_image: 127.0.0.1:{hole.port}/x/y:{n}\n", "name": "e"}
                    with _client(server.url, b) as bee:
                        return bee.post("/v1/hash", json=hostile).status_code

                with ThreadPoolExecutor(B_REQUESTS) as pool:
                    answers = [pool.submit(stalled, n) for n in range(B_REQUESTS)]
                    until(
                        "workspace B's requests to reach the black hole",
                        lambda: len(hole.held) >= WORKSPACE_THREADS or None,
                    )
                    seconds = []
                    for _ in range(A_WARMUP + A_REQUESTS):
                        started = time.perf_counter()
                        hit = http.post(f"/v1/workspaces/{a.name}/resolve", json=body)
                        seconds.append(time.perf_counter() - started)
                        assert hit.status_code == 200, hit.text
                    seconds = seconds[A_WARMUP:]
                    stalled_now = len(hole.held)
                    hole.close()
                    codes = [answer.result(timeout=120) for answer in answers]
            p99 = sorted(seconds)[int(len(seconds) * 0.99) - 1]
            assert p99 < P99_SECONDS, f"A's p99 was {p99 * 1000:.0f} ms while B stalled"
            assert stalled_now <= WORKSPACE_THREADS, "B held more threads than its own"
            assert set(codes) <= {503}, codes  # B's answers: its registry is unavailable
    finally:
        hole.close()
