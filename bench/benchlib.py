"""What the benchmarks share: where their figures come from, and a free loopback port.

The scripts in bench/ have no `.py` suffix and run as `python bench/NAME`, so this folder is on
their path and they import this module as `benchlib`.
"""

from __future__ import annotations

import os
import platform
import socket
from importlib.metadata import PackageNotFoundError, version


def machine(*packages: str) -> str:
    """Two lines on where the figures come from: the CPUs, memory, kernel and load, then the
    Python and the versions of `packages`."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    load = ", ".join(f"{n:.1f}" for n in os.getloadavg())
    versions = ", ".join(f"{name} {_version(name)}" for name in packages)
    return (
        f"nproc {len(os.sched_getaffinity(0))}, {cpu}, {memory:.0f} GB, {platform.system()} "
        f"{platform.release()}, load average {load}\n{platform.python_implementation()} "
        f"{platform.python_version()}" + (f", {versions}" if versions else "")
    )


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port
