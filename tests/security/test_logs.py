"""A build log shown to a workspace names no other workspace's repository, and not the host's
name or the server's process id (issue 9, item 9), through a real `envctl serve`: the second
workspace's push mounts the base layer from the first one's repository, and the engine says
so by name."""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path

from tests.api.server import Deployment, EnvctlServer, Tenant, build_outcome, tenant_client
from tests.conftest import Services


def _build_log(server: EnvctlServer, tenant: Tenant, spec: str) -> str:
    with tenant_client(server, tenant, timeout=120.0) as http:
        answer = http.post(f"/v1/workspaces/{tenant.name}/resolve",
                           json={"spec": spec, "name": "env.yml"})  # fmt: skip
        assert answer.status_code == 202, answer.text
        build_id = answer.json()["build_id"]
        assert build_outcome(server, tenant, build_id)["status"] == "succeeded"
        logs = http.get(f"/v1/workspaces/{tenant.name}/builds/{build_id}/logs",
                        params={"follow": "false"})  # fmt: skip
        return "\n".join(
            json.loads(line[5:])["text"] for line in logs.text.splitlines()
            if line.startswith("data:") and '"seq"' in line
        )  # fmt: skip


def test_a_log_names_no_other_workspaces_repository_nor_the_host(
    services: Services, tmp_path: Path
) -> None:
    with Deployment(services, tmp_path / "deployment") as deployment:
        server = deployment.serve()
        first, second = deployment.workspace("first"), deployment.workspace("second")
        for tenant in (first, second):
            spec = f"base_image: {services.busybox_image}\ndocker_steps: RUN echo {uuid.uuid4()}\n"
            log = _build_log(server, tenant, spec)
        assert "Mounted from another repository" in log, log  # the case this test is about
        assert f"{deployment.namespace}/first" not in log, log
        assert server.process is not None
        assert f"{socket.gethostname()}:{server.process.pid}" not in log, log
        assert "started by server " in log, log
        assert os.fspath(tmp_path) not in log, log
