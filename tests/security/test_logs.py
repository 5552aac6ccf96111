"""A build log shown to a workspace names no other workspace's repository, and not the host's
name or the server's process id (issue 9, item 9), through a real `envctl serve`: two
workspaces build on the same base, the second after the first, each with a docker step that the
engine pulls, builds and pushes (and would name what it mounts from where)."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from tests.api.server import Deployment, built_log
from tests.conftest import Services


def test_a_log_names_no_other_workspaces_repository_nor_the_host(
    services: Services, tmp_path: Path
) -> None:
    with Deployment(services, tmp_path / "deployment") as deployment:
        server = deployment.serve()
        first, second = deployment.workspace("first"), deployment.workspace("second")
        for tenant in (first, second):
            spec = f"base_image: {services.busybox_image}\ndocker_steps: RUN echo {uuid.uuid4()}\n"
            log = "\n".join(built_log(server, tenant, spec))
        assert "Pulling from" in log, log  # the engine spoke of repositories
        assert f"{deployment.namespace}/first" not in log, log
        assert server.process is not None
        assert f"{socket.gethostname()}:{server.process.pid}" not in log, log
        assert "started by worker " in log, log
        assert os.fspath(tmp_path) not in log, log
