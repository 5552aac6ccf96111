"""A revoked token stops working within ENVCTL_TOKEN_TTL (1 s by default) everywhere, open log
streams included (issue 9, item 9), through a real `envctl serve`."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
from httpx_sse import connect_sse

from tests.api.server import Deployment, until
from tests.conftest import Services

BOUND = 3.0  # seconds: the 1 s TTL, the stream's one-second poll, and slack for a slow machine


def test_a_revoked_token_is_refused_and_its_open_log_stream_ends(
    services: Services, tmp_path: Path
) -> None:
    with Deployment(services, tmp_path / "deployment") as deployment:
        server = deployment.serve()
        tenant = deployment.workspace("revoked")
        token_id, secret = deployment.token(tenant.name)
        spec = (
            f"base_image: {services.busybox_image}\ndocker_steps: |\n"
            f"  RUN printf 'step %s\\n' running && sleep 30 && echo {uuid.uuid4().hex}\n"
        )
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {secret}"},
            timeout=60.0, trust_env=False,
        ) as http:  # fmt: skip
            queued = http.post(f"/v1/workspaces/{tenant.name}/resolve",
                               json={"spec": spec, "name": "env.yml"})  # fmt: skip
            assert queued.status_code == 202, queued.text
            build_id = queued.json()["build_id"]
            events: list[str] = []
            closed: list[float] = []

            def watch() -> None:
                with connect_sse(
                    http, "GET", f"/v1/workspaces/{tenant.name}/builds/{build_id}/logs"
                ) as source:
                    for sse in source.iter_sse():
                        events.append(f"{sse.event}: {sse.data}")
                closed.append(time.monotonic())

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            until("the step to run", lambda: any("step running" in e for e in events) or None,
                  seconds=120)  # fmt: skip
            deployment.revoke(token_id)
            revoked = time.monotonic()
            until("the stream to end", lambda: closed or None, seconds=BOUND)

            def refusal() -> httpx.Response | None:
                answer = http.get(f"/v1/workspaces/{tenant.name}/builds/{build_id}")
                return answer if answer.status_code == 401 else None

            refused = until("the token to be refused", refusal, seconds=BOUND)
            assert refused.json()["kind"] == "unauthorized"
            assert closed[0] - revoked < BOUND
            assert not any(e.startswith("end:") for e in events), "the build is not over"
            watcher.join(timeout=10)
