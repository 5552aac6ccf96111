"""Settings read from the environment: the build steps' limits, on by default."""

from __future__ import annotations

import pytest

from hashing import SpecError
from service.settings import ServiceLimits, Settings


@pytest.mark.parametrize(
    ("env", "memory", "cpus", "parent"),
    [
        ({}, 4 << 30, 2.0, None),
        ({"ENVCTL_BUILD_MEMORY": "512m", "ENVCTL_BUILD_CPUS": "0.5"}, 512 << 20, 0.5, None),
        ({"ENVCTL_BUILD_MEMORY": "0", "ENVCTL_BUILD_CPUS": "0"}, None, None, None),
        ({"ENVCTL_BUILD_CGROUP_PARENT": "/envctl-builds"}, 4 << 30, 2.0, "/envctl-builds"),
    ],
)
def test_build_steps_are_limited_unless_the_operator_says_otherwise(
    env: dict[str, str], memory: int | None, cpus: float | None, parent: str | None
) -> None:
    settings = Settings.from_env({"ENVCTL_HOME": "/nonexistent", **env})
    assert (settings.build_memory, settings.build_cpus) == (memory, cpus)
    assert settings.build_cgroup_parent == parent


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ENVCTL_BUILD_MEMORY", "-1g"),
        ("ENVCTL_BUILD_CPUS", "-2"),
        ("ENVCTL_BUILD_MEMORY", "lots"),
        ("ENVCTL_WORKERS", "-1"),
        ("ENVCTL_LEASE_SECONDS", "0"),
        ("ENVCTL_LEASE_SECONDS", "soon"),
    ],
)
def test_a_bad_limit_names_its_setting(name: str, value: str) -> None:
    with pytest.raises(SpecError) as info:
        Settings.from_env({"ENVCTL_HOME": "/nonexistent", name: value})
    assert info.value.source == name


def test_a_server_names_what_its_settings_leave_unbounded() -> None:
    limited = Settings.from_env(
        {"ENVCTL_HOME": "/nonexistent", "ENVCTL_BUILD_CGROUP_PARENT": "/envctl-builds"}
    )
    assert limited.exposures() == []
    assert Settings.from_env({"ENVCTL_HOME": "/nonexistent"}).exposures() == [
        "ENVCTL_BUILD_CGROUP_PARENT is not set: nothing bounds a build step's processes"
    ]
    wide = Settings.from_env(
        {
            "ENVCTL_HOME": "/nonexistent",
            "ENVCTL_BUILD_NETWORK": "host",
            "ENVCTL_ALLOW_URL_SOURCES": "1",
            "ENVCTL_BUILD_MEMORY": "0",
            "ENVCTL_BUILD_CPUS": "0",
            "ENVCTL_TOKEN_TTL": "30",
        }
    )
    named = [line.split(" ")[0].split("=")[0] for line in wide.exposures()]
    assert named == [
        "ENVCTL_BUILD_NETWORK",
        "ENVCTL_ALLOW_URL_SOURCES",
        "ENVCTL_BUILD_MEMORY",
        "ENVCTL_BUILD_CPUS",
        "ENVCTL_BUILD_CGROUP_PARENT",
        "ENVCTL_TOKEN_TTL",
    ]


def test_a_server_may_run_no_builds_and_the_lease_is_the_operators() -> None:
    """ENVCTL_WORKERS=0: a server whose builds `envctl worker`s run; the lease they hold."""
    settings = Settings.from_env(
        {"ENVCTL_HOME": "/nonexistent", "ENVCTL_WORKERS": "0", "ENVCTL_LEASE_SECONDS": "6"}
    )
    limits = ServiceLimits.of(settings)
    assert (limits.workers, limits.lease_seconds) == (0, 6.0)
    default = ServiceLimits.of(Settings.from_env({"ENVCTL_HOME": "/nonexistent"}))
    assert (default.workers, default.lease_seconds) == (2, 30.0)
