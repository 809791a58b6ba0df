"""Prometheus metrics of one app (its own registry, so apps and tests never share counters).

Model-call metrics are derived from the ``Step`` records the Reasoner yields: one step per call,
with role, backend, latency and token usage.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from agents.types import RunResult, Step

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_ROUND_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "proreason_http_requests",
            "HTTP requests by route template, method and status code",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "proreason_http_request_duration_seconds",
            "HTTP request latency (until the last byte, streams included)",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.http_in_flight = Gauge(
            "proreason_http_requests_in_flight",
            "HTTP requests being served now (streams included)",
            registry=r,
        )
        self.in_flight = Gauge(
            "proreason_questions_in_flight", "questions being answered now", registry=r
        )
        self.rejected = Counter(
            "proreason_rejected", "questions rejected with 429 (too many in flight)", registry=r
        )
        self.questions = Counter(
            "proreason_questions",
            "questions finished, by method, mode and outcome (ok or an error code)",
            ["method", "mode", "outcome"],
            registry=r,
        )
        self.rounds = Histogram(
            "proreason_rounds",
            "ProReason rounds per answered question",
            buckets=_ROUND_BUCKETS,
            registry=r,
        )
        self.stop_reasons = Counter(
            "proreason_stop_reasons", "answers by stop reason", ["stop_reason"], registry=r
        )
        self.parse_failures = Counter(
            "proreason_parse_failures",
            "unusable model outputs (round spent)",
            ["role"],
            registry=r,
        )
        self.model_calls = Counter(
            "proreason_model_calls",
            "model calls by agent role, backend and outcome (ok, parse_error, error)",
            ["role", "backend", "outcome"],
            registry=r,
        )
        self.model_latency = Histogram(
            "proreason_model_call_duration_seconds",
            "model call latency by agent role and backend",
            ["role", "backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_tokens = Counter(
            "proreason_model_tokens",
            "tokens by agent role, backend and kind (prompt, completion, image)",
            ["role", "backend", "kind"],
            registry=r,
        )

        self.circuit_open = Gauge(
            "proreason_upstream_circuit_open",
            "an HTTP model upstream's circuit breaker, by role: 0 closed, 1 open, 0.5 half-open",
            ["role"],
            registry=r,
        )

    def watch_circuits(self, backends: Mapping[str, object]) -> None:
        """Export the breaker state of every backend that has one (``circuit_state``), read at
        scrape time."""
        values = {"closed": 0.0, "half_open": 0.5, "open": 1.0}
        for role, backend in backends.items():
            if isinstance(getattr(backend, "circuit_state", None), str):
                child = self.circuit_open.labels(role)
                child.set_function(lambda b=backend: values.get(b.circuit_state, 1.0))

    def observe_step(self, step: Step) -> None:
        outcome = "error" if step.error else "parse_error" if step.parse_error else "ok"
        self.model_calls.labels(step.role, step.backend, outcome).inc()
        self.model_latency.labels(step.role, step.backend).observe(step.latency_s)
        usage = step.usage
        tokens = self.model_tokens
        tokens.labels(step.role, step.backend, "prompt").inc(usage.prompt_tokens)
        tokens.labels(step.role, step.backend, "completion").inc(usage.completion_tokens)
        if usage.image_tokens:
            tokens.labels(step.role, step.backend, "image").inc(usage.image_tokens)
        if step.parse_error:
            self.parse_failures.labels(step.role).inc()

    def observe_result(self, result: RunResult) -> None:
        self.questions.labels(result.method, result.mode, "ok").inc()
        self.rounds.observe(result.rounds)
        self.stop_reasons.labels(result.stop_reason).inc()

    def observe_failure(self, method: str, mode: str, code: str) -> None:
        self.questions.labels(method, mode, code).inc()

    def observe_request(self, endpoint: str, method: str, status: int, latency_s: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.request_latency.labels(endpoint).observe(latency_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
