"""Image references, normalized the way Docker normalizes them.

`ubuntu`, `library/ubuntu`, `docker.io/library/ubuntu:latest` and `index.docker.io/library/ubuntu`
are one image; `name:tag@sha256:X` is `name@sha256:X` (a digest wins over its tag). The grammar is
distribution's `reference` package, so anything Docker accepts is accepted here and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hashing.errors import SpecError

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")

DEFAULT_DOMAIN = "docker.io"
_LEGACY_DEFAULT_DOMAIN = "index.docker.io"
_OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
_MAX_NAME = 255


class InvalidReference(ValueError):
    """The text is not an image reference Docker would accept."""


@dataclass(frozen=True, order=True)
class ImageName:
    """A normalized image reference: registry domain, repository path, tag and/or digest."""

    domain: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """`domain/repository`, the part that names the repository."""
        return f"{self.domain}/{self.repository}"

    @property
    def pinned(self) -> bool:
        """True when the reference names content (a digest), not a movable tag."""
        return self.digest is not None

    def with_digest(self, digest: str) -> ImageName:
        """The same image, pinned to `digest` (the tag is kept for display only)."""
        if not _SHA256.match(digest):
            raise InvalidReference(f"not a sha256 digest: {digest!r}")
        return ImageName(self.domain, self.repository, self.tag, digest)

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def canonical(self) -> dict[str, str]:
        """What of the reference decides the image: the digest when pinned, else the tag."""
        if self.digest is not None:
            return {"name": self.name, "digest": self.digest}
        return {"name": self.name, "tag": self.tag or DEFAULT_TAG}


def parse_image(text: str) -> ImageName:
    """Parse and normalize an image reference; raise InvalidReference with the reason."""
    ref = text.strip()
    if not ref:
        raise InvalidReference("empty image reference")
    match = _REFERENCE.match(ref)
    if match is None:
        if _REFERENCE.match(ref.lower()):
            raise InvalidReference(f"repository name must be lowercase: {ref!r}")
        raise InvalidReference(f"invalid image reference {ref!r}")
    name, tag, digest = match.group("name"), match.group("tag"), match.group("digest")
    if len(name) > _MAX_NAME:
        raise InvalidReference(f"repository name longer than {_MAX_NAME} characters")
    if digest is not None:
        if not digest.startswith("sha256:"):
            raise InvalidReference(f"unsupported digest algorithm in {ref!r} (sha256 only)")
        if not _SHA256.match(digest):
            raise InvalidReference(f"a sha256 digest is 64 lowercase hex characters: {digest!r}")
    domain, repository = _split_domain(name)
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageName(domain, repository, tag, digest)


def parse_image_at(text: str, source: str) -> ImageName:
    """`parse_image` for a reference given outside a spec file (a flag, a setting, a request
    field): a malformed one is a SpecError naming `source`."""
    try:
        return parse_image(text)
    except InvalidReference as exc:
        raise SpecError(str(exc), source=source) from None


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"):
        domain, repository = DEFAULT_DOMAIN, name
    else:
        domain, repository = first, rest
    if domain == _LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in repository:
        repository = _OFFICIAL_REPO_PREFIX + repository
    return domain, repository


_ARCH_ALIASES = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", None),
    "386": ("386", None),
}
_PLATFORM = re.compile(r"^(?P<os>[a-z0-9_]+)/(?P<arch>[a-z0-9_-]+)(?:/(?P<variant>[a-z0-9]+))?$")
DEFAULT_PLATFORM = "linux/amd64"


# The platforms envctl builds images for: Linux on the architectures conda has packages for.
PLATFORMS = (
    "linux/amd64", "linux/arm64", "linux/ppc64le", "linux/s390x", "linux/386", "linux/arm/v7",
    "linux/arm/v6", "linux/riscv64",
)  # fmt: skip


def normalize_platform(text: str) -> str:
    """Normalize `os/arch[/variant]` as containerd does (`linux/x86_64` is `linux/amd64`);
    InvalidReference unless it is one of the PLATFORMS envctl builds."""
    match = _PLATFORM.match(text.strip().lower())
    if match is None:
        raise InvalidReference(f"a platform is os/arch[/variant], like linux/amd64: {text!r}")
    arch, variant = _ARCH_ALIASES.get(match.group("arch"), (match.group("arch"), None))
    variant = match.group("variant") or variant
    if arch == "arm64" and variant == "v8":
        variant = None  # arm64 implies v8
    if arch == "arm" and variant is None:
        variant = "v7"
    normal = f"{match.group('os')}/{arch}" + (f"/{variant}" if variant else "")
    if normal not in PLATFORMS:
        raise InvalidReference(
            f"envctl does not build for {normal}: the platform is one of {', '.join(PLATFORMS)}"
        )
    return normal
