"""The service's Prometheus metrics, one registry per app (several apps may share a process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ServiceMetrics:
    """Requests, hits by tier, builds by outcome, build duration and queue length."""

    def __init__(self, queue_length: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "envctl_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.hits = Counter(
            "envctl_hits",
            "Resolves answered from a registry, by tier",
            ["tier"],
            registry=self.registry,
        )
        self.builds = Counter(
            "envctl_builds", "Builds finished, by outcome", ["outcome"], registry=self.registry
        )
        self.build_seconds = Histogram(
            "envctl_build_duration_seconds",
            "Running time of finished builds (queue time excluded)",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600),
            registry=self.registry,
        )
        queue = Gauge("envctl_queue_length", "Builds queued", registry=self.registry)
        queue.set_function(queue_length)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
