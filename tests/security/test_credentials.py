"""Each workspace reaches its registry with its own credentials, and no other workspace's build
ever gets them (issue 9, item 1), through a real `envctl serve` and the two htpasswd
registries `scripts/services` starts: alpha holds workspace A's images, beta workspace B's; the
server's host has no Docker config credentials for either.

The operator allowed every workspace to read a base path in alpha (a shared base behind a
password): A's build pulls it with alpha's credentials; B's, which the source policy
lets through, is refused by the registry itself. The engine would have served B the image A's
build pulled without asking the registry again: every build of a shared service first proves,
with the credentials it would pull with, that it may read each image it reads. A tag is pinned
with those same credentials: B does not learn the digest of a tag only A may read. A login or
logout on the command line reaches the running server within its credentials' TTL."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from registry.open import open_registry
from tests.api.server import (
    Deployment,
    EnvctlServer,
    Tenant,
    build_outcome,
    tenant_client,
    until,
)
from tests.conftest import Services
from tests.registry.images import push_image


def _resolve(server: EnvctlServer, tenant: Tenant, spec: str) -> dict[str, Any]:
    with tenant_client(server, tenant, timeout=120.0) as http:
        answer = http.post(f"/v1/workspaces/{tenant.name}/resolve",
                           json={"spec": spec, "name": "env.yml"})  # fmt: skip
        assert answer.status_code == 202, answer.text
        return build_outcome(server, tenant, answer.json()["build_id"])


def test_a_workspace_never_builds_with_another_workspaces_credentials(
    services: Services, tmp_path: Path
) -> None:
    alpha, beta = services.alpha_credentials, services.beta_credentials
    shared = f"{services.alpha_registry}/shared-{uuid.uuid4().hex[:8]}"
    store = open_registry(shared, credentials=alpha)
    try:
        base = push_image(store, "1")
    finally:
        store.close()
    (tmp_path / "docker").mkdir()
    env = {
        "ENVCTL_ALLOWED_BASE_REGISTRIES": f"{services.base_registry},{shared}",
        "DOCKER_CONFIG": str(tmp_path / "docker"),  # no credentials from the host
    }
    with Deployment(services, tmp_path / "deployment", env=env) as deployment:
        # a run's own namespaces: the registries outlive it
        run = uuid.uuid4().hex[:8]
        homes = {
            "a": f"{services.alpha_registry}/a-{run}",
            "b": f"{services.beta_registry}/b-{run}",
        }
        a, b = (deployment.workspace(name, registry=home) for name, home in homes.items())
        for name, user in (("a", alpha), ("b", beta)):
            deployment.envctl("workspace", "login", name, "--username", user.username,
                              "--password-stdin", stdin=user.password + "\n")  # fmt: skip
        server = deployment.serve()

        # each builds into its own registry, pushing with its own credentials
        for tenant in (a, b):
            spec = f"base_image: {services.busybox_image}\nvariables: {{N: '{uuid.uuid4()}'}}\n"
            outcome = _resolve(server, tenant, spec)
            assert outcome["status"] == "succeeded", outcome
            assert str(outcome["image"]).startswith(homes[tenant.name] + "/"), outcome

        # the shared base behind alpha's password: A pulls it, B is refused by the registry
        spec = f"base_image: {shared}/env@{base.digest}\nvariables: {{N: '{uuid.uuid4()}'}}\n"
        outcome = _resolve(server, a, spec)
        assert outcome["status"] == "succeeded", outcome
        outcome = _resolve(server, b, spec)
        assert outcome["status"] == "failed", outcome
        assert outcome["failure_class"] == "RegistryAuthError", outcome
        assert f"registry {services.alpha_registry} requires credentials" in outcome["message"]
        assert alpha.password not in str(outcome)

        # its tag: A's build pins it with alpha's credentials; to B it is unreadable, and
        # neither its resolve nor its hash gives away the digest
        tagged = f"base_image: {shared}/env:1\nvariables: {{N: '{uuid.uuid4()}'}}\n"
        outcome = _resolve(server, a, tagged)
        assert outcome["status"] == "succeeded", outcome
        for path in ("/v1/workspaces/b/resolve", "/v1/hash"):
            with tenant_client(server, b) as http:
                answer = http.post(path, json={"spec": tagged, "name": "env.yml"})
            assert answer.status_code == 502, (path, answer.text)  # the registry refused
            assert f"registry {services.alpha_registry} requires credentials" in answer.text
            assert base.digest not in answer.text

        # A's logout reaches the running server within seconds, and so does a login again
        def hash_status(wanted: int) -> bool | None:
            with tenant_client(server, a) as http:
                answer = http.post("/v1/hash", json={"spec": tagged, "name": "env.yml"})
            return True if answer.status_code == wanted else None

        assert hash_status(200)
        deployment.envctl("workspace", "logout", "a")
        until("A's logout to reach the server", lambda: hash_status(502), seconds=15)
        deployment.envctl("workspace", "login", "a", "--username", alpha.username,
                          "--password-stdin", stdin=alpha.password + "\n")  # fmt: skip
        until("A's login to reach the server", lambda: hash_status(200), seconds=15)
