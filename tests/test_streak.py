"""The per-request streak rule: k from each request's own last verification."""

from __future__ import annotations

import pytest

from agents.records import FinishedRequest, RequestStep
from agents.registry import ControllerContext, build_controller, parse_controller
from agents.streak import StreakController
from tests.factories import decode_step, observation


def verified(rid: str, drafted: int, accepted: int) -> RequestStep:
    return RequestStep(rid, drafted, drafted, accepted, accepted + 1, 0, 10, 0.0)


def running(*rids: str):
    return observation(len(rids), per_request_acceptance={rid: 0.5 for rid in rids})


def test_full_acceptance_grows_a_rejection_cuts_to_what_was_accepted():
    streak = StreakController(k_max=4)
    assert streak.decide(running("a", "b")).per_request == {"a": 1, "b": 1}
    streak.observe(decode_step([verified("a", 1, 1), verified("b", 1, 0)]))
    assert streak.decide(running("a", "b")).per_request == {"a": 2, "b": 1}
    streak.observe(decode_step([verified("a", 2, 2), verified("b", 1, 1)]))
    streak.observe(decode_step([verified("a", 3, 3), verified("b", 2, 2)]))
    streak.observe(decode_step([verified("a", 4, 4), verified("b", 3, 1)]))
    assert streak.decide(running("a", "b")).per_request == {"a": 4, "b": 1}


def test_a_step_without_drafts_keeps_the_streak_and_finished_requests_are_forgotten():
    streak = StreakController(k_max=4)
    streak.observe(decode_step([verified("a", 1, 1)]))
    streak.observe(decode_step([verified("a", 0, 0)]))  # nothing proposed: no news
    assert streak.decide(running("a")).per_request == {"a": 2}
    done = FinishedRequest("a", 0.0, 0.1, 0.2, 10, 5)
    streak.observe(decode_step([], [done]))
    assert streak.decide(running("a")).per_request == {"a": 1}
    streak.observe(decode_step([verified("b", 2, 2)]))
    streak.reset()
    assert streak.decide(running("b")).per_request == {"b": 1}


def test_a_start_of_zero_is_refused():
    with pytest.raises(ValueError, match="start must be >= 1"):
        StreakController(k_max=4, start=0)


def test_the_registry_builds_it_without_a_profile():
    spec = parse_controller("streak-per-request", 4)
    context = ControllerContext(4, 8, 2048, (), 1.0, 0.05, profile=None)
    assert isinstance(build_controller(spec, context), StreakController)
