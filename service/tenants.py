"""The workspaces one service serves: each one's registries (its own, then the global one),
its tag resolver and its environment resolver, opened on first use and kept open, since the
confirmed hits live in them. A workspace's stored credentials are read again every
CREDENTIALS_TTL seconds: a login or logout on any server reaches every other within that."""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

from builder.config import BuildConfig
from builder.docker import DockerBuilder
from builder.pipeline import ImageBuilder
from builder.resolve import RememberedFailure, Resolver
from client.errors import NotFound
from hashing import EnvKey, ImageName
from hashing.errors import Kind
from registry.auth import Credentials, docker_config_credentials
from registry.base import Registry
from registry.digests import DigestResolver
from registry.open import open_registry, open_tiers
from registry.store import StoreRegistry
from service.errors import kind_of
from service.policy import Prefix, shared_sources
from service.records import GLOBAL_WORKSPACE, FailureRecord, Workspace
from service.settings import Settings
from service.store import BuildStore

T = TypeVar("T")

CREDENTIALS_TTL = 5.0  # seconds a workspace's stored credentials are trusted before a re-read


@dataclass
class Tenant:
    """One workspace's registries and resolvers. `tags` pins its specs' tags with exactly the
    credentials its builds pull with (a tag only another workspace may read does not resolve);
    `credentials` are its own stored ones it was opened with, `checked` when they were read."""

    tiers: Registry
    resolver: Resolver
    tags: DigestResolver
    credentials: Credentials | None = None
    checked: float = 0.0
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in self.closers:
            close()


class Tenants:
    """Workspaces by name: from the database, or the fixed ones the embedded CLI serves, and
    `_global` (the global registry alone) when one is configured."""

    def __init__(
        self,
        settings: Settings,
        store: BuildStore,
        engine: DockerBuilder,
        fixed: Mapping[str, Workspace] | None = None,
        default_base: ImageName | None = None,
        *,
        policed: bool = True,
    ) -> None:
        """`policed=False` (the embedded CLI): builds pull as the host's user would, with every
        credential of the Docker config, and need not prove their access first."""
        self.settings = settings
        self._policed = policed
        self._default_base = default_base
        self._store = store
        self._engine = engine
        self._fixed = dict(fixed) if fixed is not None else None
        self._open: dict[str, Tenant] = {}
        self._retired: list[Tenant] = []  # reopened with new credentials; builds may still use them
        self._guard = threading.Lock()

    def workspace(self, name: str) -> Workspace:
        """The workspace called `name`; NotFound when there is none."""
        if self._fixed is not None:
            if name not in self._fixed:
                raise NotFound(f"no workspace {name!r}")
            return self._fixed[name]
        if name == GLOBAL_WORKSPACE:
            if not self.settings.global_registry:
                raise NotFound("no global registry is configured")
            return Workspace(GLOBAL_WORKSPACE, self.settings.global_registry, datetime.now(UTC))
        workspace = self._store.get_workspace(name)
        if workspace is None:
            raise NotFound(f"no workspace {name!r}")
        return workspace

    def get(self, name: str) -> Tenant:
        """The workspace's tenant, opened on first use and reopened when its stored credentials
        changed (read again every CREDENTIALS_TTL seconds); NotFound for an unknown workspace."""
        tenant = self._open.get(name)
        if tenant is not None and not self._changed(name, tenant):
            return tenant
        workspace = self.workspace(name)
        with self._guard:
            current = self._open.get(name)
            if current is None or current is tenant:
                if current is not None:
                    self._retired.append(current)
                current = self._open[name] = self._tenant(workspace)
        return current

    def _changed(self, name: str, tenant: Tenant) -> bool:
        """Whether `name`'s stored credentials differ from the ones `tenant` was opened with,
        asking the database at most every CREDENTIALS_TTL seconds; a database outage keeps the
        current ones (the service's requests fail on their own if they need the database)."""
        if self._fixed is not None or name == GLOBAL_WORKSPACE:
            return False
        now = time.monotonic()
        if now - tenant.checked < CREDENTIALS_TTL:
            return False
        try:
            stored = self._store.get_credentials(name)
        except Exception as exc:
            if kind_of(exc) is Kind.UNAVAILABLE:
                return False
            raise
        tenant.checked = now
        return stored != tenant.credentials

    def opened(self, name: str) -> Tenant | None:
        """The tenant if it is open already (no I/O)."""
        return self._open.get(name)

    def ping(self, address: str) -> None:
        """Raise unless the registry at `address` answers."""
        registry = self._registry(address, None)
        try:
            registry.lookup(EnvKey("0" * 32))
        finally:
            registry.close()

    def close(self) -> None:
        """Close every registry opened."""
        for tenant in [*self._open.values(), *self._retired]:
            tenant.close()

    def _tenant(self, workspace: Workspace) -> Tenant:
        s = self.settings
        is_global = workspace.name == GLOBAL_WORKSPACE
        stored = self._stored_credentials(workspace)
        credentials = stored if stored is not None else self._service_credentials(workspace)
        own = self._registry(workspace.registry, credentials)
        closers = [own.close]
        global_ = None
        if s.global_registry and not is_global:
            global_ = self._registry(s.global_registry, s.global_credentials)
            closers.append(global_.close)
        tiers = open_tiers(own, global_)
        pull_credentials = self._pull_credentials(workspace, credentials)
        pull_registries = self._pull_registries(workspace) if self._policed else None
        # tags are pinned, and reads proven, with what the engine will pull with
        tags = DigestResolver(
            insecure=s.insecure_registries,
            timeout=s.registry_timeout,
            ttl=s.tag_ttl,
            credentials=functools.partial(_pull_source, pull_registries, pull_credentials),
        )
        closers.append(tags.close)
        config = BuildConfig(
            s.home,
            credentials,
            pull_registries=pull_registries,
            pull_credentials=pull_credentials,
            confirm_read=tags.confirm if pull_registries is not None else None,
            insecure=s.insecure_registries,
            # envctl reads a base image with what the engine would pull it with
            base_credentials=functools.partial(_pull_source, pull_registries, pull_credentials),
        )
        builder = ImageBuilder(own, self._engine, config)
        resolver = Resolver(tiers, builder, failures=StoredFailures(self._store, workspace.name))
        return Tenant(tiers, resolver, tags, stored, time.monotonic(), closers)

    def _stored_credentials(self, workspace: Workspace) -> Credentials | None:
        """A workspace's own credentials, if the operator gave it some (`envctl workspace
        login`); never for the embedded CLI's fixed workspaces or the global tier."""
        if self._fixed is not None or workspace.name == GLOBAL_WORKSPACE:
            return None
        return self._store.get_credentials(workspace.name)

    def _service_credentials(self, workspace: Workspace) -> Credentials | None:
        """The service's credentials for a workspace's tier (None: the Docker config's, as the
        engine finds them)."""
        if workspace.name == GLOBAL_WORKSPACE:
            return self.settings.global_credentials
        return self.settings.workspace_credentials

    def _pull_credentials(
        self, workspace: Workspace, own: Credentials | None
    ) -> dict[str, Credentials]:
        """The credentials (by host) a workspace's build pulls with in place of the Docker
        config's: its own for its registry, the service's for the global registry."""
        pulls: dict[str, Credentials] = {}
        s = self.settings
        if s.global_registry and s.global_credentials is not None:
            pulls[Prefix.parse(s.global_registry).domain] = s.global_credentials
        if own is not None and not workspace.registry.startswith("oci:"):
            pulls[Prefix.parse(workspace.registry).domain] = own
        return pulls

    def _pull_registries(self, workspace: Workspace) -> tuple[str, ...]:
        """The hosts whose credentials a workspace's build may use: its own registry's and
        those of what every workspace may read (`service.policy.shared_sources`)."""
        shared = shared_sources(self.settings, self._default_base)
        own = [] if workspace.registry.startswith("oci:") else [Prefix.parse(workspace.registry)]
        return tuple(dict.fromkeys(p.domain for p in (*own, *shared)))

    def _registry(self, address: str, credentials: Credentials | None) -> StoreRegistry:
        s = self.settings
        return open_registry(
            address,
            credentials=credentials,
            insecure=s.insecure_registries,
            timeout=s.registry_timeout,
        )


class StoredFailures:
    """A workspace's remembered failures, in the database: every worker and server on it
    answers a key's failure alike, whichever host built it (`builder.resolve.FailureMemory`)."""

    def __init__(self, store: BuildStore, workspace: str) -> None:
        self._store = store
        self._workspace = workspace

    def get(self, key: EnvKey) -> RememberedFailure | None:
        record = self._store.remembered_failure(self._workspace, key)
        if record is None:
            return None
        return RememberedFailure(record.kind, record.message, record.build_id, record.log_tail)

    def remember(self, key: EnvKey, failure: RememberedFailure) -> None:
        self._store.remember_failure(
            FailureRecord(
                self._workspace,
                key,
                failure.kind,
                failure.message,
                failure.build_id,
                failure.log_tail,
                datetime.now(UTC),
            )
        )

    def forget(self, key: EnvKey) -> None:
        self._store.forget_failure(self._workspace, key)


def _pull_source(
    registries: tuple[str, ...] | None, given: Mapping[str, Credentials], host: str
) -> Credentials | None:
    """The credentials a workspace's build pulls from `host` with, as the engine gets them:
    its own or the service's where given, the Docker config's for the hosts it may read
    (`registries`; None: any host, for the embedded CLI, whose user is the host's)."""
    if host in given:
        return given[host]
    if registries is None or host in registries:
        return docker_config_credentials(host)
    return None


class Memo(Generic[T]):
    """A bounded map that forgets its least recently used entries; safe between threads."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, T] = OrderedDict()
        self._guard = threading.Lock()

    def get(self, name: str) -> T | None:
        with self._guard:
            value = self._items.get(name)
            if value is not None:
                self._items.move_to_end(name)
            return value

    def put(self, name: str, value: T) -> None:
        with self._guard:
            self._items[name] = value
            if len(self._items) > self._size:
                self._items.popitem(last=False)
