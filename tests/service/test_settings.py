"""Settings read from the environment: the build steps' limits, on by default; the service's
addresses for a client (ENVCTL_URL) and how long it tries them (ENVCTL_UNREACHABLE_AFTER)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


# the service's addresses, for a client (ENVCTL_URL) and how long it tries them
def test_envctl_url_is_a_list_of_addresses_in_order_once_each() -> None:
    settings = Settings.from_env(
        {
            "ENVCTL_HOME": "/nonexistent",
            "ENVCTL_URL": " http://127.0.0.1:8080/ , https://envctl.example/api,http://127.0.0.1:8080",
        }
    )
    assert settings.server_urls == ("http://127.0.0.1:8080", "https://envctl.example/api")
    assert settings.server_url == "http://127.0.0.1:8080", "existing callers: one is configured"
    assert settings.unreachable_after == 30.0
    embedded = Settings.from_env({"ENVCTL_HOME": "/nonexistent", "ENVCTL_URL": ""})
    assert (embedded.server_urls, embedded.server_url) == ((), None)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("ftp://127.0.0.1:21", "not an http:// or https:// URL"),
        ("127.0.0.1:8080", "not an http:// or https:// URL"),
        ("http://", "not an http:// or https:// URL"),
        ("http://127.0.0.1:99999", "not a URL"),
        ("http://127.0.0.1:8080,http://[::1", "not a URL"),
        ("http://admin:hunter2@127.0.0.1:8080", "has credentials in it"),
        ("http://127.0.0.1:8080/?token=x", "no query or fragment"),
        (" , ", "no server address"),
    ],
)
def test_a_bad_envctl_url_is_refused_naming_the_setting_and_no_secret(
    value: str, said: str
) -> None:
    with pytest.raises(SpecError) as info:
        Settings.from_env({"ENVCTL_HOME": "/nonexistent", "ENVCTL_URL": value})
    assert info.value.source == "ENVCTL_URL"
    assert said in info.value.message
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan"])
def test_a_bad_unreachable_bound_names_its_setting(value: str) -> None:
    with pytest.raises(SpecError) as info:
        Settings.from_env({"ENVCTL_HOME": "/nonexistent", "ENVCTL_UNREACHABLE_AFTER": value})
    assert info.value.source == "ENVCTL_UNREACHABLE_AFTER"


def test_the_unreachable_bound_is_seconds() -> None:
    env = {"ENVCTL_HOME": "/nonexistent", "ENVCTL_UNREACHABLE_AFTER": "2.5"}
    assert Settings.from_env(env).unreachable_after == 2.5


_hosts = st.sampled_from(["127.0.0.1", "localhost", "[::1]", "envctl.example", "10.1.2.3"])
_urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["http", "https"]),
    _hosts,
    st.sampled_from(["", ":1", ":8080", ":65535"]),
    st.sampled_from(["", "/", "/envctl", "/a/b/"]),
)


@given(st.lists(_urls, min_size=1, max_size=5), st.sampled_from([",", ", ", " ,"]))
def test_any_list_of_addresses_reads_back_in_order_once_each(urls: list[str], sep: str) -> None:
    settings = Settings.from_env({"ENVCTL_HOME": "/nonexistent", "ENVCTL_URL": sep.join(urls)})
    expected = list(dict.fromkeys(url.rstrip("/") for url in urls))
    assert list(settings.server_urls) == expected


def test_a_server_may_run_no_builds_and_the_lease_is_the_operators() -> None:
    """ENVCTL_WORKERS=0: a server whose builds `envctl worker`s run; the lease they hold."""
    settings = Settings.from_env(
        {"ENVCTL_HOME": "/nonexistent", "ENVCTL_WORKERS": "0", "ENVCTL_LEASE_SECONDS": "6"}
    )
    limits = ServiceLimits.of(settings)
    assert (limits.workers, limits.lease_seconds) == (0, 6.0)
    default = ServiceLimits.of(Settings.from_env({"ENVCTL_HOME": "/nonexistent"}))
    assert (default.workers, default.lease_seconds) == (2, 30.0)
