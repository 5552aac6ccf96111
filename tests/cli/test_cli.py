"""`envctl hash` and `envctl explain`, driven like a user, against the real registry."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest
from typer.testing import CliRunner

from cli.main import app
from hashing import is_key
from tests.conftest import EXAMPLES, Services

THREE_FORMATS = [
    str(EXAMPLES / "hello.envctl.yml"),
    str(EXAMPLES / "hello.reordered.yml"),
    str(EXAMPLES / "azureml" / "environment.yml"),
]


def _keys(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines()]


def test_hash_prints_key_and_path_per_spec(cli: CliRunner, services: Services) -> None:
    result = cli.invoke(app, ["hash", *THREE_FORMATS])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("  ")[1] for line in lines] == THREE_FORMATS
    keys = _keys(result.stdout)
    assert all(is_key(k) for k in keys)
    assert len(set(keys)) == 1, "one environment written three ways must have one key"


def test_hash_json_lists_spec_and_key(cli: CliRunner, services: Services) -> None:
    result = cli.invoke(app, ["hash", "--json", *THREE_FORMATS[:2]])
    assert result.exit_code == 0, result.stderr
    body = json.loads(result.stdout)
    assert [item["spec"] for item in body] == THREE_FORMATS[:2]
    assert all(is_key(item["key"]) and item["pinned"] for item in body)


def test_a_changed_spec_gets_another_key(cli: CliRunner, services: Services) -> None:
    result = cli.invoke(
        app, ["hash", str(EXAMPLES / "hello.envctl.yml"), str(EXAMPLES / "hello.changed.yml")]
    )
    assert result.exit_code == 0, result.stderr
    assert len(set(_keys(result.stdout))) == 2


def _push_new_image(services: Services, ref: str) -> str:
    """Build a tiny distinct image on the test engine, push it as `ref`; return its digest."""
    client = docker.DockerClient(base_url=services.docker_host)
    try:
        dockerfile = f"FROM {services.busybox_image}\nLABEL nonce={uuid.uuid4().hex}\n"
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=ref, pull=False)
        repository, tag = ref.rsplit(":", 1)
        for line in client.images.push(repository, tag=tag, stream=True, decode=True):
            assert "error" not in line, line
        return str(client.images.get_registry_data(ref).id)
    finally:
        client.close()


def test_a_moved_tag_means_a_new_key(cli: CliRunner, services: Services, tmp_path: Path) -> None:
    ref = f"{services.global_host}/test/moving:{uuid.uuid4().hex[:12]}"
    spec = tmp_path / "spec.yml"
    spec.write_text(f"base_image: {ref}\ndocker_steps: RUN true\n")
    first_digest = _push_new_image(services, ref)
    first = cli.invoke(app, ["hash", str(spec)])
    assert first.exit_code == 0, first.stderr
    again = cli.invoke(app, ["hash", str(spec)])
    assert _keys(again.stdout) == _keys(first.stdout), "an unmoved tag keeps its key"

    _push_new_image(services, ref)
    moved = cli.invoke(app, ["hash", str(spec)])
    assert moved.exit_code == 0, moved.stderr
    assert _keys(moved.stdout) != _keys(first.stdout)

    pinned = tmp_path / "pinned.yml"
    name = ref.rsplit(":", 1)[0]
    pinned.write_text(f"base_image: {name}@{first_digest}\ndocker_steps: RUN true\n")
    by_digest = cli.invoke(app, ["hash", str(pinned)])
    assert _keys(by_digest.stdout) == _keys(first.stdout), "tag resolved to X is the same as @X"


def test_no_resolve_hashes_the_tag_and_says_unpinned(cli: CliRunner) -> None:
    result = cli.invoke(app, ["hash", "--no-resolve", "--json", THREE_FORMATS[0]])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)[0]["pinned"] is False
    text = cli.invoke(app, ["hash", "--no-resolve", THREE_FORMATS[0]])
    assert "unpinned" in text.stderr


def test_a_base_image_that_does_not_exist_is_invalid_input(
    cli: CliRunner, services: Services, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yml"
    spec.write_text(f"base_image: {services.global_host}/no/such-image:nope\n")
    result = cli.invoke(app, ["hash", str(spec)])
    assert result.exit_code == 2
    assert "not found" in result.stderr


def test_an_unreachable_registry_exits_3(cli: CliRunner, tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = tmp_path / "spec.yml"
    spec.write_text(f"base_image: 127.0.0.1:{port}/base/x:1\n")
    result = cli.invoke(app, ["hash", str(spec)])
    assert result.exit_code == 3
    assert f"127.0.0.1:{port}" in result.stderr
    assert "unreachable" in result.stderr


def test_invalid_input_exits_2_naming_file_line_and_field(cli: CliRunner, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yml"
    spec.write_text("base_image: ubuntu\nvariables:\n  THREADS: 4\n")
    result = cli.invoke(app, ["hash", "--no-resolve", str(spec)])
    assert result.exit_code == 2
    assert f"{spec}:3: variables.THREADS: must be a string" in result.stderr
    assert result.stdout == ""


def test_one_bad_spec_does_not_hide_the_good_ones(cli: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("base_image: ubuntu\nbogus: 1\n")
    result = cli.invoke(app, ["hash", "--no-resolve", str(bad), THREE_FORMATS[0]])
    assert result.exit_code == 2
    assert len(_keys(result.stdout)) == 1
    assert "bogus" in result.stderr


@pytest.mark.parametrize(
    "args",
    [["hash"], ["hash", "--bogus", "x"], ["explain"], ["hash", "--format", "npm", "x.yml"]],
)
def test_usage_errors_exit_2(cli: CliRunner, args: list[str]) -> None:
    assert cli.invoke(app, args).exit_code == 2


def test_base_image_flag_keys_plain_conda_files(cli: CliRunner) -> None:
    conda = str(EXAMPLES / "environment.yml")
    without = cli.invoke(app, ["hash", "--no-resolve", conda])
    assert without.exit_code == 2
    assert "--base-image" in without.stderr
    ok = cli.invoke(app, ["hash", "--no-resolve", "--base-image", "ubuntu:22.04", conda])
    assert ok.exit_code == 0, ok.stderr
    bad = cli.invoke(app, ["hash", "--no-resolve", "--base-image", "Not Valid", conda])
    assert bad.exit_code == 2
    assert "--base-image" in bad.stderr


def test_explain_shows_the_canonical_inputs(
    cli: CliRunner, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENVCTL_CHANNELS", raising=False)  # the spec's own channels, then
    result = cli.invoke(app, ["explain", THREE_FORMATS[1]])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for expected in (
        "127.0.0.1:5001/base/debian@sha256:",
        "envctl-greet",
        "envctl-hello >=2",  # `envctl-hello>=2` and `envctl-hello >= 2`, normalized and merged
        "RUN envctl-hello > /etc/hello.txt",
        "greeting.txt",
    ):
        assert expected in out
    as_json = json.loads(cli.invoke(app, ["explain", "--json", THREE_FORMATS[1]]).stdout)
    assert as_json["inputs"]["conda"]["channels"] == ["conda-forge"]


def test_explain_two_specs_names_exactly_what_differs(cli: CliRunner, services: Services) -> None:
    same = cli.invoke(app, ["explain", *THREE_FORMATS[:2]])
    assert same.exit_code == 0, same.stderr
    assert same.stdout.startswith("same key ")
    changed = cli.invoke(
        app, ["explain", "--json", THREE_FORMATS[0], str(EXAMPLES / "hello.changed.yml")]
    )
    body = json.loads(changed.stdout)
    assert body["same_key"] is False
    assert body["differences"] == [
        {"input": "conda.dependencies", "left": ["envctl-hello >=2"], "right": ["envctl-hello 1.*"]}
    ]


def test_the_console_script_runs(services: Services) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ENVCTL_BASE_IMAGE"}
    script = Path(sys.executable).parent / "envctl"  # installed beside this interpreter
    result = subprocess.run(
        [str(script), "hash", THREE_FORMATS[0]],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert is_key(result.stdout.split()[0])


@pytest.mark.parametrize(
    ("name", "value"),
    [("ENVCTL_BUILD_NETWORK", "bogus"), ("ENVCTL_REGISTRY_TIMEOUT", "soon")],
)
def test_bad_settings_exit_2_naming_the_variable(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    result = cli.invoke(app, ["hash", "--no-resolve", THREE_FORMATS[0]])
    assert result.exit_code == 2
    assert name in result.stderr


def test_every_bad_spec_is_reported(cli: CliRunner, tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / f"{name}.yml").write_text(f"base_image: ubuntu\nbogus_{name}: 1\n")
    result = cli.invoke(
        app, ["hash", "--no-resolve", *(str(tmp_path / f"{n}.yml") for n in ("one", "two"))]
    )
    assert result.exit_code == 2
    assert "bogus_one" in result.stderr
    assert "bogus_two" in result.stderr


def test_the_operators_package_sources_are_part_of_the_key(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = []
    for channel in ("https://example.invalid/a", "https://example.invalid/b"):
        monkeypatch.setenv("ENVCTL_CHANNELS", channel)
        result = cli.invoke(app, ["hash", "--no-resolve", THREE_FORMATS[0]])
        assert result.exit_code == 0, result.stderr
        keys.append(_keys(result.stdout)[0])
    assert keys[0] != keys[1], "the channels a build uses decide what it installs"
