"""What the commands share: the invocation's settings, the service it talks to (a server, or one
in-process), and how a spec file becomes a key or a request. Each imports what it needs when it
runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from cli.local import LocalEnvironments
    from client.http import EnvctlClient
    from hashing import EnvironmentSpec, EnvKey, ImageName, SpecFormat
    from registry import DigestResolver
    from service.settings import Settings
    from specio.request import ResolveRequest


@dataclass
class Context:
    """One invocation's settings, and the connections it opened (closed when it ends)."""

    settings: Settings
    closers: list[Callable[[], None]] = field(default_factory=list)
    _environments: EnvctlClient | LocalEnvironments | None = None
    _resolver: DigestResolver | None = None

    @property
    def resolver(self) -> DigestResolver:
        """Base tags to digests, asked of their registries (opened on first use)."""
        if self._resolver is None:
            from registry.digests import DigestResolver

            s = self.settings
            self._resolver = DigestResolver(
                insecure=s.insecure_registries, timeout=s.registry_timeout
            )
            self.closers.append(self._resolver.close)
        return self._resolver

    def environments(self) -> EnvctlClient | LocalEnvironments:
        """The service: the server at ENVCTL_URL, or an embedded one in this process."""
        if self._environments is None:
            s = self.settings
            if s.server_url:
                from client.http import EnvctlClient

                self._environments = EnvctlClient(
                    s.server_urls,
                    s.token,
                    workspace=s.workspace,
                    unreachable_after=s.unreachable_after,
                )
            else:
                from cli.local import LocalEnvironments

                self._environments = LocalEnvironments(s)
            self.closers.append(self._environments.close)
        return self._environments

    def close(self) -> None:
        """Close every connection this invocation opened."""
        for close in self.closers:
            close()


def context_of(ctx: typer.Context) -> Context:
    obj = ctx.find_root().obj
    assert isinstance(obj, Context)
    return obj


def keyed(
    c: Context, path: str, *, resolve: bool, base_image: str | None, fmt: str | None
) -> tuple[EnvironmentSpec, EnvKey]:
    """Load a spec, pin its base image (unless told not to) and compute its key."""
    from hashing import compute_key
    from specio.files import load_spec

    spec = load_spec(path, format=spec_format(fmt), default_base=default_base(c, base_image))
    s = c.settings
    spec = spec.with_package_sources(
        channels=s.channels, pip_index_url=s.pip_index_url, pip_find_links=s.pip_find_links
    )
    if resolve:
        spec = spec.with_images(c.resolver.resolve)
    return spec, compute_key(spec)


def key_of(
    c: Context, path: str, *, resolve: bool, base_image: str | None, fmt: str | None
) -> tuple[str, bool]:
    """A spec's key and whether it is pinned: the server's (its package sources are part of
    the key) when there is one, else computed here."""
    if c.settings.server_url and resolve:
        answer = c.environments().hash(request_of(c, path, base_image, fmt))
        return answer.key, answer.pinned
    spec, key = keyed(c, path, resolve=resolve, base_image=base_image, fmt=fmt)
    return key, spec.pinned


def default_base(c: Context, flag: str | None) -> ImageName | None:
    from hashing import parse_image_at

    text = flag or c.settings.default_base_image
    if text is None:
        return None
    return parse_image_at(text, "--base-image" if flag else "ENVCTL_BASE_IMAGE")


def spec_format(text: str | None) -> SpecFormat | None:
    if text is None or text in ("envctl", "conda", "azureml"):
        return text  # type: ignore[return-value]
    from hashing import SpecError

    raise SpecError(f"unknown format {text!r}: use envctl, conda or azureml", source="--format")


def request_of(c: Context, path: str, base_image: str | None, fmt: str | None) -> ResolveRequest:
    """A spec file and the files it names, as the service takes them."""
    from specio.request import request_from_file

    default = base_image or c.settings.default_base_image
    if default is not None:
        default_base(c, base_image)  # a malformed --base-image is the flag's error
    return request_from_file(path, format=spec_format(fmt), base_image=default)


def prewarm_target(c: Context, to_global: bool) -> EnvctlClient | LocalEnvironments:
    """Where prewarm builds: the workspace, or with --global the global registry (through a
    server, an admin token's; embedded, the global registry's credentials)."""
    s = c.settings
    if not to_global:
        return c.environments()
    from service.records import GLOBAL_WORKSPACE

    if s.server_url:
        from client.http import EnvctlClient

        return EnvctlClient(
            s.server_urls,
            s.token,
            workspace=GLOBAL_WORKSPACE,
            unreachable_after=s.unreachable_after,
        )
    if not s.global_registry:
        from hashing import SpecError

        raise SpecError("--global needs ENVCTL_GLOBAL_REGISTRY", source="--global")
    from datetime import UTC, datetime

    from cli.local import LocalEnvironments
    from service.records import Workspace

    target = Workspace(GLOBAL_WORKSPACE, s.global_registry, datetime.now(UTC))
    return LocalEnvironments(s, workspace=target)
