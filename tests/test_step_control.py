"""The step-control core on its own: plans, and steps recorded after later ones began."""

from __future__ import annotations

from agents.controller import Decision
from agents.records import StepRecord
from serving.step_control import Outcome, Plan, StepControl


class _Recorder:
    """A controller that returns queued decisions and keeps every record it observes."""

    name = "recorder"

    def __init__(self, decisions: list[Decision]) -> None:
        self.decisions = list(decisions)
        self.seen: list[StepRecord] = []

    def reset(self) -> None:
        self.seen.clear()

    def decide(self, obs) -> Decision:
        return self.decisions.pop(0)

    def observe(self, record: StepRecord) -> None:
        self.seen.append(record)


class _Features:
    def build(self, now: float):
        return None

    def update(self, record: StepRecord) -> None:
        pass

    def reset(self) -> None:
        pass


def _outcome(rid: str, drafted: int, accepted: int, output_tokens: int) -> Outcome:
    return Outcome(
        request_id=rid,
        drafted=drafted,
        accepted=accepted,
        generated=accepted + 1,
        prefill=0,
        output_tokens=output_tokens,
        context=40,
        hits=None,
        finished=False,
        arrival_time=0.0,
        prompt_len=32,
    )


def _record(control: StepControl, plan: Plan, *outcomes: Outcome) -> StepRecord:
    return control.record(
        plan,
        outcomes,
        started_at=1.0,
        step_time=0.5,
        draft_budget=plan.k,
        num_running=2,
        num_waiting=0,
        prefill_tokens_waiting=0,
        oldest_waiting_arrival=None,
        kv_cache_usage=0.0,
        wall_time=0.5,
        cpu_time=0.5,
    )


def _begin(control: StepControl, running: list[tuple[str, int]]) -> Plan:
    return control.begin(0.0, running, list, lambda: 0)


def test_a_plan_holds_each_running_requests_k_in_order_and_its_offered_drafts():
    control = StepControl(k_max=4)
    control.set_next(3, {"b": 1})
    plan = _begin(control, [("a", 4), ("b", 4), ("c", 2)])
    assert plan.step == 0 and plan.k == 3
    assert plan.ks == (3, 1, 3)
    assert plan.request_k == {"a": 3, "b": 1, "c": 3}
    assert plan.offered == {"a": 4, "b": 4, "c": 2}
    assert _begin(control, [("a", 3)]).step == 1  # the index counts steps begun


def test_a_step_recorded_after_the_next_began_keeps_its_own_decision_and_arrivals():
    controller = _Recorder([Decision(4), Decision(1, {"a": 2})])
    control = StepControl(k_max=4)
    control.attach(controller, _Features())
    control.arrived()
    control.arrived()
    first = _begin(control, [("a", 4), ("b", 4)])
    control.arrived()
    second = _begin(control, [("a", 4), ("b", 4)])  # decided before the first's outcomes

    record = _record(control, first, _outcome("a", 4, 2, 3), _outcome("b", 4, 4, 5))
    assert record.step == 0 and record.in_flight == 1
    assert record.k == 4 and [r.k for r in record.requests] == [4, 4]
    assert record.num_arrived == 2
    assert controller.seen == [record]

    later = _record(control, second, _outcome("a", 2, 1, 5), _outcome("b", 1, 0, 6))
    assert later.step == 1 and later.in_flight == 0
    assert later.k == 1 and [r.k for r in later.requests] == [2, 1]
    assert later.num_arrived == 1
    assert [r.step for r in controller.seen] == [0, 1]


def test_a_step_recorded_before_the_next_one_begins_is_not_in_flight():
    control = StepControl(k_max=4)
    for step in range(3):
        control.set_next(step)
        plan = _begin(control, [("a", 4)])
        record = _record(control, plan, _outcome("a", step, 0, step + 1))
        assert (record.step, record.in_flight, record.k) == (step, 0, step)
