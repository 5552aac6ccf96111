"""Reading a resolve request's spec, as the service's operator configured it: the operator's
package sources, the default base image, and a memory of specs already read by content."""

from __future__ import annotations

from pathlib import Path

import xxhash
from pydantic_core import PydanticSerializationError

from hashing import EnvironmentSpec, ImageName, SpecError, parse_image_at
from service.settings import Settings
from service.tenants import Memo
from specio.received import spec_from_request
from specio.request import ResolveRequest

SPEC_MEMO = 4096  # specs remembered by request content (a few KB each)


class SpecReader:
    """The spec of a request with the operator's package sources, base image not pinned."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        default = settings.default_base_image
        self.default_base: ImageName | None = (
            None if default is None else parse_image_at(default, "ENVCTL_BASE_IMAGE")
        )
        self._specs: Memo[EnvironmentSpec] = Memo(SPEC_MEMO)

    def remembered(self, fingerprint: str) -> EnvironmentSpec | None:
        """The spec of a request read before (by its `fingerprint`), without reading it."""
        return self._specs.get(fingerprint)

    def read(self, request: ResolveRequest, *, context_dir: Path | None = None) -> EnvironmentSpec:
        """The request's spec, remembered by the request's content (reading it is most of a
        hit's cost). Only a build passes `context_dir`, where its context is written (never
        remembered: the build removes it)."""
        key = fingerprint(request)
        spec = self._specs.get(key) if context_dir is None else None
        if spec is not None:
            return spec
        s = self.settings
        spec = spec_from_request(request, default_base=self.default_base, context_dir=context_dir)
        spec = spec.with_package_sources(
            channels=s.channels, pip_index_url=s.pip_index_url, pip_find_links=s.pip_find_links
        )
        if context_dir is None:
            self._specs.put(key, spec)
        return spec


def fingerprint(request: ResolveRequest) -> str:
    """What identifies a request's content (a spec read from it is the same spec); SpecError
    for a request that JSON cannot hold again (a lone surrogate, nesting too deep)."""
    try:
        text = request.model_dump_json()
    except PydanticSerializationError as exc:
        why = "nested too deep" if "depth" in str(exc) else "not valid Unicode (a lone surrogate)"
        raise SpecError(f"the request is {why}", source="request") from None
    return xxhash.xxh3_128_hexdigest(text.encode())
