"""The controller's Prometheus metrics, observed in-process (the server's /metrics collects the
same values from the engine-core process)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from agents.records import RequestStep
from serving.metrics import ControllerMetrics
from tests.factories import decode_step


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_each_requests_k_and_the_verification_budget_are_exported():
    metrics = ControllerMetrics("adaptive-verification")
    before = {
        "steps": value("turbospec:k_chosen_count"),
        "requests": value("turbospec:k_per_request_count"),
        "k": value("turbospec:k_per_request_sum"),
        "budgets": value("turbospec:verification_budget_count"),
        "slots": value("turbospec:verification_budget_sum"),
    }
    requests = [RequestStep(f"r{i}", k, k, 0, 1, 0, 5, 0.0) for i, k in enumerate((0, 2, 4))]
    metrics.step(decode_step(requests, k=4), budget=6)
    metrics.step(decode_step(requests, k=4))  # a controller without a budget
    assert value("turbospec:k_chosen_count") - before["steps"] == 2
    assert value("turbospec:k_per_request_count") - before["requests"] == 6
    assert value("turbospec:k_per_request_sum") - before["k"] == 12
    assert value("turbospec:verification_budget_count") - before["budgets"] == 1
    assert value("turbospec:verification_budget_sum") - before["slots"] == 6
