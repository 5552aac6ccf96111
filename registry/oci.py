"""`OciRegistry`: the registry contract over the OCI distribution API (HTTP or HTTPS).

An address is `HOST[:PORT]/NAMESPACE` (NAMESPACE may hold slashes, or be empty); the images live
in repository `NAMESPACE/env`, one tag per key. Every primitive is one or two requests of the
distribution API; HTTP, authentication, retries and the error rules are `registry.http`'s.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from urllib.parse import urljoin

import httpx

from hashing.errors import SpecError
from registry.auth import Credentials, repository_scope
from registry.base import MANIFEST_TYPES, REPOSITORY, Descriptor, Manifest
from registry.errors import RegistryAuthError, RegistryError, RegistryUnavailable
from registry.http import DEFAULT_RETRIES, RegistryClient, RetryPolicy, check
from registry.store import StoreRegistry, VerifiedStream

_ACCEPT = ", ".join(MANIFEST_TYPES)
# distribution's grammar for a repository path component, and for a host.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HOST = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?"
)
_MAX_NAME = 255  # distribution refuses longer repository names
# Blobs up to this size are read into memory before upload, so that any failure can be retried.
BUFFERED_BLOB_SIZE = 4 * 1024 * 1024


class InvalidRegistryAddress(SpecError, ValueError):
    """An address that is not `HOST[:PORT]/NAMESPACE`: a configuration error, raised before
    any request (not a RegistryError: no registry was asked). The CLI exits 2 for it."""


def parse_address(address: str) -> tuple[str, str]:
    """`HOST[:PORT]/NAMESPACE` → (host, namespace); the namespace may be empty."""
    host, _, namespace = address.strip().partition("/")
    namespace = namespace.rstrip("/")
    problem = None
    if "://" in address:
        problem = "give HOST[:PORT]/NAMESPACE without a scheme"
    elif not _HOST.fullmatch(host):
        problem = f"{host!r} is not a host[:port]"
    elif ":" in host.rsplit("]", 1)[-1] and not 0 < int(host.rsplit(":", 1)[1]) < 65536:
        problem = "the port is out of range"
    elif namespace and not all(_COMPONENT.fullmatch(c) for c in namespace.split("/")):
        problem = (
            f"namespace {namespace!r} must be lowercase path components "
            "([a-z0-9] joined by '.', '_', '__' or '-')"
        )
    elif len(namespace) + len(REPOSITORY) + 1 > _MAX_NAME:
        problem = f"the namespace is longer than {_MAX_NAME - len(REPOSITORY) - 1} characters"
    if problem is not None:
        raise InvalidRegistryAddress(f"invalid registry address {address!r}: {problem}")
    return host.lower(), namespace


class OciRegistry(StoreRegistry):
    """Environment images in repository `NAMESPACE/env` of an OCI distribution registry.

    Thread-safe: one shared httpx.Client; close it with `close()` or `with`.
    """

    def __init__(
        self,
        address: str,
        *,
        credentials: Credentials | None = None,
        insecure: Iterable[str] = (),
        timeout: float = 10.0,
        retries: int | RetryPolicy = DEFAULT_RETRIES,
        client: httpx.Client | None = None,
        repository: str | None = None,
    ) -> None:
        """`repository`, when given, is the whole repository name in place of
        `NAMESPACE/env`: an image envctl did not write, such as a base image, read (or mounted
        from) through the same primitives."""
        super().__init__()
        self.host, self.namespace = parse_address(address)
        default = f"{self.namespace}/{REPOSITORY}" if self.namespace else REPOSITORY
        self.repository = repository or default
        self._retries = retries if isinstance(retries, RetryPolicy) else RetryPolicy(retries)
        self._http = RegistryClient(
            credentials=credentials,
            insecure=insecure,
            timeout=timeout,
            retries=self._retries,
            client=client,
        )
        self._base = f"{self._http.base_url(self.host)}/v2/{self.repository}"
        self._pull = (repository_scope(self.repository, "pull"),)
        self._push = (repository_scope(self.repository, "pull", "push"),)

    @property
    def address(self) -> str:
        """`HOST[:PORT]/NAMESPACE` (just `HOST[:PORT]` for the empty namespace)."""
        return f"{self.host}/{self.namespace}" if self.namespace else self.host

    def reference(self, tag: str) -> str:
        """`HOST[:PORT]/NAMESPACE/env:TAG`, or `…/env@sha256:…` for a digest."""
        separator = "@" if ":" in tag else ":"
        return f"{self.host}/{self.repository}{separator}{tag}"

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def __enter__(self) -> OciRegistry:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OciRegistry({self.address!r})"

    # -- manifests -----------------------------------------------------------------------------

    def resolve(self, reference: str) -> Descriptor | None:
        """One manifest HEAD: what `reference` points to now, or None on 404."""
        url = f"{self._base}/manifests/{reference}"
        response = self._http.request("HEAD", url, scopes=self._pull, headers={"Accept": _ACCEPT})
        if response.status_code == 404:
            return None
        check(response, f"could not resolve {reference}")
        digest = response.headers.get("Docker-Content-Digest")
        size = response.headers.get("Content-Length")
        if not digest or size is None:  # some registries say less on HEAD: ask for the bytes
            manifest = self.get_manifest(reference)
            return None if manifest is None else manifest.descriptor
        return Descriptor(_media_type(response), digest, int(size))

    def get_manifest(self, reference: str) -> Manifest | None:
        """The manifest under a tag or digest, or None on 404; its bytes are checked against
        the digest asked for, or the one the registry names."""
        url = f"{self._base}/manifests/{reference}"
        response = self._http.request("GET", url, scopes=self._pull, headers={"Accept": _ACCEPT})
        if response.status_code == 404:
            return None
        check(response, f"could not read manifest {reference}")
        manifest = Manifest(_media_type(response), response.content)
        expected = reference if ":" in reference else response.headers.get("Docker-Content-Digest")
        if expected and expected != manifest.digest:
            raise RegistryError(
                f"manifest arrived with digest {manifest.digest}, not {expected}", endpoint=url
            )
        return manifest

    def put_manifest(self, reference: str, manifest: Manifest) -> None:
        """PUT the manifest under a tag or its digest."""
        url = f"{self._base}/manifests/{reference}"
        response = self._http.request(
            "PUT",
            url,
            scopes=self._push,
            headers={"Content-Type": manifest.media_type},
            content=manifest.data,
        )
        check(response, f"the registry refused manifest {reference}")

    # -- blobs ---------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        """One blob HEAD."""
        url = f"{self._base}/blobs/{digest}"
        response = self._http.request("HEAD", url, scopes=self._pull)
        if response.status_code == 404:
            return False
        check(response, f"could not check blob {digest}")
        return True

    def read_blob(self, descriptor: Descriptor) -> AbstractContextManager[Iterator[bytes]]:
        """The blob streamed (redirects to storage are followed, without our Authorization:
        httpx drops it across origins) and verified against the descriptor as it passes."""
        return self._read_blob(descriptor)

    @contextmanager
    def _read_blob(self, descriptor: Descriptor) -> Iterator[Iterator[bytes]]:
        url = f"{self._base}/blobs/{descriptor.digest}"
        response = self._http.request(
            "GET", url, scopes=self._pull, stream=True, follow_redirects=True
        )
        try:
            check(response, f"could not read blob {descriptor.digest}")
            yield iter(VerifiedStream(descriptor, self._http.iter_bytes(response), url))
        finally:
            response.close()

    def put_blob(self, descriptor: Descriptor, chunks: Iterator[bytes]) -> None:
        """A monolithic upload: POST opens a session, one PUT ?digest= closes it; the registry
        checks the digest too.

        A blob up to BUFFERED_BLOB_SIZE (configs, metadata, small layers) is read and verified
        first, so a transient failure restarts its upload from scratch. A larger one streams,
        verified on the way (VerifiedStream holds the last chunk back until the bytes match), so
        a corrupt or failing source aborts the PUT before it completes and nothing is
        committed; it restarts only if the failure came before the first byte was taken from
        the source, which cannot be replayed: after that, RegistryUnavailable is raised.
        """
        endpoint = f"{self._base}/blobs/{descriptor.digest}"
        body: bytes | _Started
        if descriptor.size <= BUFFERED_BLOB_SIZE:
            body = b"".join(VerifiedStream(descriptor, chunks, endpoint))
        else:
            body = _Started(iter(VerifiedStream(descriptor, chunks, endpoint)))
        attempts = self._retries.retries + 1
        for attempt in range(attempts):
            location = self._start_upload(descriptor)
            url = str(httpx.URL(location).copy_merge_params({"digest": descriptor.digest}))
            try:
                response = self._http.request(
                    "PUT",
                    url,
                    scopes=self._push,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(descriptor.size),
                    },
                    content=body,
                    retry=False,  # a failed PUT may spoil its session: restart from the POST
                )
            except RegistryUnavailable:
                self._cancel_upload(location)
                if attempt == attempts - 1 or (isinstance(body, _Started) and body.started):
                    raise
                time.sleep(self._retries.delay(attempt))
                continue
            except BaseException:
                self._cancel_upload(location)
                raise
            check(response, f"the registry refused blob {descriptor.digest}")
            return

    def _start_upload(self, descriptor: Descriptor, **params: str) -> str:
        url = f"{self._base}/blobs/uploads/"
        response = self._http.request("POST", url, scopes=self._push, params=params, retry=True)
        check(response, f"could not start the upload of {descriptor.digest}")
        location = str(response.headers.get("Location", ""))
        if not location:
            raise RegistryError("upload session without Location", endpoint=url)
        return urljoin(url, location)

    def _cancel_upload(self, location: str) -> None:
        """Best effort: an abandoned session is the registry's to expire anyway, and the error
        that got us here is the one worth raising."""
        with suppress(RegistryError):
            self._http.request("DELETE", location, scopes=self._push, retry=False).close()

    def mount_blob(self, descriptor: Descriptor, source: StoreRegistry) -> bool:
        """Cross-repository mount, tried only from another repository of the same registry:
        201 means linked; 202 means the registry opened an upload instead, which is cancelled.
        A refusal to read the source repository with these credentials is not an error here:
        the caller then streams the blob with each side's own credentials."""
        if (
            not isinstance(source, OciRegistry)
            or source.host != self.host
            or source.repository == self.repository
        ):
            return False
        url = f"{self._base}/blobs/uploads/"
        try:
            response = self._http.request(
                "POST",
                url,
                scopes=(*self._push, repository_scope(source.repository, "pull")),
                params={"mount": descriptor.digest, "from": source.repository},
                retry=True,  # a repeated mount is harmless: at worst one more session to cancel
            )
        except RegistryAuthError:
            return False
        if response.status_code == 201:
            return True
        check(response, f"could not mount blob {descriptor.digest}")
        location = response.headers.get("Location")
        if location:
            self._cancel_upload(urljoin(url, location))
        return False

    # -- tags ----------------------------------------------------------------------------------

    def tags(self, page_size: int | None = None) -> list[str]:
        """Every tag, following `Link: <…>; rel="next"` pages; a repository the registry does
        not know has none. (distribution 2.8 ignores `n` and sends all tags at once.)"""
        url: str | None = f"{self._base}/tags/list"
        params = {"n": str(page_size)} if page_size else None
        found: list[str] = []
        while url is not None:
            response = self._http.request("GET", url, scopes=self._pull, params=params)
            if response.status_code == 404 and not found:
                return []
            check(response, "could not list tags")
            found.extend(response.json().get("tags") or [])  # a repo emptied by deletes: null
            following = response.links.get("next", {}).get("url")
            url = urljoin(url, following) if following else None
            params = None  # the next link carries its own query
        return found

    def delete_tag(self, tag: str) -> None:
        """Resolve the tag, then DELETE its manifest by digest (distribution 2.8 cannot delete
        by tag). Beware: that removes every tag of the same manifest in this repository, which
        for content keys costs a rebuild, never a wrong image. A missing tag is a no-op."""
        found = self.resolve(tag)
        if found is None:
            return
        url = f"{self._base}/manifests/{found.digest}"
        scopes = (repository_scope(self.repository, "delete"),)
        response = self._http.request("DELETE", url, scopes=scopes)
        if response.status_code == 404:
            return  # deleted meanwhile by someone else: what we wanted
        if response.status_code == 405:
            raise RegistryError(
                f"the registry does not allow deleting {tag} (storage.delete disabled?)",
                endpoint=url,
                status=405,
            )
        check(response, f"could not delete {tag}")


def _media_type(response: httpx.Response) -> str:
    return str(response.headers.get("Content-Type", "")).split(";", 1)[0].strip()


class _Started:
    """An iterator that remembers whether anything was taken from it (a PUT that failed before
    that can be sent again)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.started = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        self.started = True
        return next(self._chunks)
