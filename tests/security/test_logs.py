"""A build log shown to a workspace names no other workspace's repository, and not the host's
name or the server's process id (issue 9, item 9), through a real `envctl serve`: the second
workspace's push mounts the base layer from the first one's repository, and the engine says
so by name."""

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
        assert "Mounted from another repository" in log, log  # the case this test is about
        assert f"{deployment.namespace}/first" not in log, log
        assert server.process is not None
        assert f"{socket.gethostname()}:{server.process.pid}" not in log, log
        assert "started by server " in log, log
        assert os.fspath(tmp_path) not in log, log
