"""Hindsight references: the best k for each step, knowing the step's acceptance in advance.

Greedy outputs do not depend on k, so once a window has been replayed the tokens every
request will produce are known. Before each step the scheduler hook shows the oracle every
decoding request's drafts (in model time, the k_max proposal); comparing them with the known
output gives the accepted count at every k exactly (nothing is censored), and the cost model
prices each k's step. The oracle then picks:

- `oracle`: the k with the most tokens per second for this step;
- `oracle-per-request`: a k per request, each verifying at most the drafts it will have
  accepted, under a common cap chosen the same way (the step costs the sum of verified drafts
  and the longest draft), which says what request-level control (as in SpecServe) could add.

Both are myopic (one step at a time) and peek at the future: references, never deployable
controllers. For a request sampled at temperature > 0 the known output is one draw of many,
so the oracle is defined for greedy workloads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agents.controller import Decision
from agents.cost import CostModel, StepLoad
from agents.features import Observation
from agents.records import DraftView, StepRecord


def accepted(drafts: Sequence[int], output: Sequence[int], position: int) -> int:
    """How many leading drafts match the known output from `position` on."""
    count = 0
    for draft, token in zip(drafts, output[position : position + len(drafts)], strict=False):
        if draft != token:
            break
        count += 1
    return count


class StepOracle:
    """Chooses each step's k (or per-request ks) from the step's known acceptance."""

    def __init__(
        self,
        cost: CostModel,
        k_max: int,
        outputs: Mapping[str, Sequence[int]],
        *,
        per_request: bool = False,
        max_num_batched_tokens: int = 2048,
    ) -> None:
        if not outputs:
            raise ValueError("an oracle needs the window's outputs from an earlier replay")
        self.cost = cost
        self.k_max = k_max
        self.outputs = outputs
        self.per_request = per_request
        self.max_num_batched_tokens = max_num_batched_tokens
        self.name = "oracle-per-request" if per_request else "oracle"
        self._views: list[DraftView] = []
        self._prefill_waiting = 0

    def reset(self) -> None:
        """Forget the last step's drafts."""
        self._views = []
        self._prefill_waiting = 0

    def see_drafts(self, views: Sequence[DraftView], prefill_waiting: int) -> None:
        """Take the decoding requests' drafts and the prompt tokens waiting, before a step."""
        self._views = list(views)
        self._prefill_waiting = prefill_waiting

    def decide(self, obs: Observation) -> Decision:
        """The cap with the best tokens per second for the coming step (see the module)."""
        views = self._views
        if not views:
            return Decision(0)
        hits = [
            accepted(v.drafts, self.outputs[v.request_id], v.position)
            if v.request_id in self.outputs
            else 0
            for v in views
        ]
        best_k, best_rate = 0, -1.0
        for k in range(self.k_max + 1):
            if self.per_request:
                verified = [min(hit, k) for hit in hits]
                gained = verified
            else:
                verified = [min(len(v.drafts), k) for v in views]
                gained = [min(hit, k) for hit in hits]
            rate = (len(views) + sum(gained)) / self.cost.seconds(self._load(views, verified))
            if rate > best_rate:
                best_k, best_rate = k, rate
        if not self.per_request:
            return Decision(best_k)
        per_request = {v.request_id: min(hit, best_k) for v, hit in zip(views, hits, strict=True)}
        return Decision(best_k, per_request)

    def observe(self, record: StepRecord) -> None:
        """Nothing to learn: the next step's drafts come through `see_drafts`."""

    def _load(self, views: Sequence[DraftView], verified: Sequence[int]) -> StepLoad:
        # Prompt chunks take what the decodes leave of the step's token budget.
        decode_tokens = len(views) + sum(verified)
        prefill = min(self._prefill_waiting, max(self.max_num_batched_tokens - decode_tokens, 0))
        return StepLoad(
            decode_context=tuple(v.context for v in views),
            verified=tuple(verified),
            prefill=((prefill, 0),) if prefill else (),
            draft_len=max(verified, default=0),
        )
