"""Per-request speculation length from each request's own last verification."""

from __future__ import annotations

from agents.controller import Decision, check_k
from agents.features import Observation
from agents.records import StepRecord


class StreakController:
    """Each request drafts one token more than it last verified when all of those were
    accepted, else as many as were accepted, and never fewer than one.

    A rule in the spirit of Hugging Face assisted generation's heuristic schedule (a longer
    draft after a full acceptance, a shorter one after a rejection), but per request and
    without a cost model: it asks whether a request's own last step predicts its next one.
    The floor of one draft matters: a request held at k = 0 never shows again that it would
    accept, and the rule would keep it there for good.
    """

    def __init__(self, k_max: int, start: int = 1) -> None:
        self.k_max = k_max
        self.start = check_k(start, k_max, "start")
        if self.start < 1:
            raise ValueError("start must be >= 1: a request at k = 0 never drafts again")
        self.name = "streak-per-request"
        self._next: dict[str, int] = {}

    def reset(self) -> None:
        """Forget every request's streak."""
        self._next.clear()

    def decide(self, obs: Observation) -> Decision:
        """Every running request its own k; a request not yet verified starts at `start`."""
        per_request = {rid: self._next.get(rid, self.start) for rid in obs.per_request_acceptance}
        return Decision(self.start, per_request)

    def observe(self, record: StepRecord) -> None:
        """Grow the k of requests that had every draft accepted, cut the others to what they
        had accepted; steps where a request verified nothing leave its k as it was."""
        for req in record.requests:
            if req.drafted:
                if req.accepted == req.drafted:
                    self._next[req.request_id] = min(self.k_max, req.accepted + 1)
                else:
                    self._next[req.request_id] = max(req.accepted, 1)
        for done in record.finished:
            self._next.pop(done.request_id, None)
