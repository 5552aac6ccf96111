"""The service core: the build store, workspaces and their registries, the source policy,
build workers, log fan-out and metrics, and the one composition root that builds them from
settings (`service.compose`). The HTTP app, the CLI and build workers all run on it."""
