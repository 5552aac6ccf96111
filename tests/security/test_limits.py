"""A build step on a server whose operator set no limits is limited all the same (issue 9,
item 9): 4 GiB of memory with no swap on top and two CPUs, through a real `envctl serve`."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.api.server import Deployment, built_log
from tests.conftest import Services

# cgroup v2 files first, then v1 (this machine's engine runs on v1)
_PROBE = (
    "RUN echo limits $(cat /sys/fs/cgroup/memory.max 2>/dev/null"
    " || cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
    " $(cat /sys/fs/cgroup/memory.swap.max 2>/dev/null"
    " || cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes 2>/dev/null || echo no-swap-file)"
    " $(cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)"
)


def test_build_steps_are_limited_by_default(services: Services, tmp_path: Path) -> None:
    with Deployment(services, tmp_path / "deployment") as deployment:
        server = deployment.serve()
        tenant = deployment.workspace("limits")
        steps = f"  RUN echo {uuid.uuid4()}\n  {_PROBE}\n"
        spec = f"base_image: {services.busybox_image}\ndocker_steps: |\n{steps}"
        lines = built_log(server, tenant, spec)
    (limits,) = [line.split()[1:] for line in lines if line.startswith("limits ")]
    memory, swap, cpu = limits[0], limits[1], limits[2:]
    assert int(memory) == 4 << 30, limits
    assert swap in (str(4 << 30), "0", "no-swap-file"), limits  # v1: memory+swap; v2: swap alone
    assert cpu in (["200000"], ["200000", "100000"]), limits
