"""What a workspace's spec may make envctl read: the source policy, checked before anything of
the spec is fetched (its base image's digest included).

    images   base_image, COPY/ADD --from, RUN --mount=from=: the workspace's own namespace, the
             global registry, the default base image's repository or a registry the operator
             allows (ENVCTL_ALLOWED_BASE_REGISTRIES); never another workspace's namespace, even
             inside an allowed registry
    URLs     ADD of a URL or a git reference, a pip URL requirement: refused unless the operator
             allows URL sources (ENVCTL_ALLOW_URL_SOURCES), and then only http(s) to hosts whose
             every address is public (no loopback, link-local, private or reserved range)

An image flag or an ADD source with `$` is refused: a build argument could name anything.
Every refusal is a SpecError naming the file, line and field, so the API answers 422.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from hashing import EnvironmentSpec, SpecError
from hashing.dockersteps import DockerStep
from hashing.imageref import ImageName, InvalidReference, parse_image
from service.settings import Settings

Lookup = Callable[[str], Iterable[str]]
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s;]+")


@dataclass(frozen=True)
class Prefix:
    """A registry, or a namespace in one: `HOST[:PORT]` or `HOST[:PORT]/PATH`."""

    domain: str
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> Prefix:
        """`HOST[:PORT][/PATH]`; Docker Hub's legacy host is Docker Hub."""
        domain, _, path = text.strip().rstrip("/").partition("/")
        domain = domain.lower()
        if domain == "index.docker.io":
            domain = "docker.io"
        return cls(domain, path)

    def holds(self, image: ImageName) -> bool:
        """True when `image` lives in this registry or namespace."""
        if image.domain.lower() != self.domain:
            return False
        return (
            not self.path
            or image.repository == self.path
            or (image.repository.startswith(self.path + "/"))
        )

    @property
    def depth(self) -> int:
        """How specific the prefix is: 0 for a whole registry, else its path's components."""
        return len(self.path.split("/")) if self.path else 0

    def __str__(self) -> str:
        return f"{self.domain}/{self.path}" if self.path else self.domain


@dataclass(frozen=True)
class SourcePolicy:
    """The images and URLs one workspace's specs may name."""

    own: tuple[Prefix, ...]
    allowed: tuple[Prefix, ...]
    others: tuple[Prefix, ...] = ()  # other workspaces' namespaces: refused even if allowed
    url_sources: bool = False
    lookup: Lookup | None = None  # host → its addresses (default: the resolver's)

    def check(self, spec: EnvironmentSpec) -> None:
        """Raise SpecError for the first image or URL this workspace may not read."""
        self.check_image(spec.base_image, *spec.base_origin)
        for stage in spec.stages:  # every stage's FROM, as the base's
            if stage.image is not None:
                self.check_image(stage.image, stage.source or None, stage.line or None, "FROM")
        names = spec.stage_names()
        for step in spec.steps():  # an ONBUILD trigger is checked as its sub-instruction
            self._check_step(step, names)
        if spec.conda is not None:
            for requirement, source, line, field in spec.conda.pip_urls:
                url = _URL.search(requirement)
                self._check_url(url[0] if url else requirement, source, line, field, pip=True)

    def check_image(
        self, image: ImageName, source: str | None, line: int | None, field: str
    ) -> None:
        """Raise SpecError unless the workspace may pull `image`: the most specific prefix
        that holds it decides (another workspace's namespace inside an allowed registry, or
        inside this workspace's own, is still refused)."""
        best: tuple[int, int] = (-1, 0)  # (depth of the prefix, 1 may read / 0 may not)
        for prefixes, may in ((self.others, 0), (self.allowed, 1), (self.own, 1)):
            for prefix in prefixes:
                if prefix.holds(image):
                    best = max(best, (prefix.depth, may))
        if best[1]:
            return
        raise SpecError(
            f"{image.name} is not a registry this workspace may read: use the workspace's own "
            "namespace, the global registry or a registry the operator allows "
            "(ENVCTL_ALLOWED_BASE_REGISTRIES)",
            source=source,
            line=line,
            field=field,
        )

    def _check_step(self, step: DockerStep, stages: frozenset[str]) -> None:
        kind = step.sub_instruction or step.instruction
        where = (step.source or None, step.line or None)
        for name, value in step.image_flags():
            if "$" in value:
                raise SpecError(
                    f"{kind} {name} uses a variable; write the image out",
                    source=where[0],
                    line=where[1],
                    field=kind,
                )
            if value.isdigit() or value.lower() in stages:  # a stage, by index or by name
                continue
            try:
                image = parse_image(value)
            except InvalidReference as exc:
                raise SpecError(str(exc), source=where[0], line=where[1], field=kind) from None
            self.check_image(image, where[0], where[1], f"{kind} {name}")
        if kind == "ADD" and not step.heredocs:
            for source in step.args[:-1]:
                if "$" in source:
                    raise SpecError(
                        "ADD source uses a variable; write it out",
                        source=where[0],
                        line=where[1],
                        field="ADD",
                    )
                if _is_remote(source):
                    self._check_url(source, where[0], where[1], "ADD", pip=False)

    def _check_url(
        self, url: str, source: str | None, line: int | None, field: str, *, pip: bool
    ) -> None:
        what = "a pip URL requirement" if pip else "ADD of a URL"
        if not self.url_sources:
            raise SpecError(
                f"{what} makes the builder host fetch it; envctl does not fetch URLs for a "
                "workspace (the operator can allow public ones: ENVCTL_ALLOW_URL_SOURCES)"
                + ("; publish the package on the index instead" if pip else "; COPY a file"),
                source=source,
                line=line,
                field=field,
            )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SpecError(
                f"{what} must be http or https (no git, ssh or file references): {url!r}",
                source=source,
                line=line,
                field=field,
            )
        lookup = self.lookup or _addresses
        try:
            addresses = [ipaddress.ip_address(a) for a in lookup(parts.hostname)]
        except (OSError, ValueError):
            addresses = []
        if not addresses or not all(a.is_global for a in addresses):
            raise SpecError(
                f"{parts.hostname} is not a public address; envctl never fetches from loopback, "
                "link-local or private networks",
                source=source,
                line=line,
                field=field,
            )


def shared_sources(settings: Settings, default_base: ImageName | None) -> tuple[Prefix, ...]:
    """What every workspace may read besides its own namespace: the operator's allowed
    registries, the global registry and the default base image's repository. The policy and
    the credentials a build may pull with both come from this."""
    shared = [Prefix.parse(r) for r in settings.allowed_base_registries]
    if settings.global_registry and not settings.global_registry.startswith("oci:"):
        shared.append(Prefix.parse(settings.global_registry))
    if default_base is not None:
        shared.append(Prefix(default_base.domain, default_base.repository))
    return tuple(shared)


def _is_remote(source: str) -> bool:
    """What Docker's ADD fetches instead of reading the context: a URL or a git reference."""
    lowered = source.lower()
    return "://" in lowered or lowered.startswith(("git@", "github.com/"))


def _addresses(host: str) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, None)]
