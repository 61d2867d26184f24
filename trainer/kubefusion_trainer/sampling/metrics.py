"""Sampler counters (prefix kubefusion_sample_), registered next to the shared progress gauges."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class SampleMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.registry = registry
        self.requests = Counter(
            "kubefusion_sample_requests", "Chat-completion requests sent", ["source"], registry=registry
        )
        self.samples = Counter("kubefusion_sample_samples", "Answers received", ["source"], registry=registry)
        self.tokens = Counter(
            "kubefusion_sample_tokens", "Tokens reported by the server", ["source", "kind"], registry=registry
        )
        self.errors = Counter(
            "kubefusion_sample_errors",
            "Failed requests, by kind (HTTP status, timeout, connection, bad_response)",
            ["source", "kind"],
            registry=registry,
        )
        self.retries = Counter(
            "kubefusion_sample_retries", "Requests sent again", ["source"], registry=registry
        )

    def value(self, name: str, **labels: str) -> float:
        """A counter's current value (tests and the stage summary read it)."""
        return self.registry.get_sample_value(f"kubefusion_sample_{name}_total", labels) or 0.0
