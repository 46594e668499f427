"""Acceptance tables: how many drafts the target accepts at every output position of a request.

With greedy sampling a request's output is the same whatever k schedule produced it
(speculation is lossless), and so are the drafts proposed at each output position p (the
number of output tokens already produced): ngram looks them up in the tokens so far, and a
greedy draft model continues the same tokens. A request's acceptance is then a function of
position alone: `proposed[p]` drafts are on offer at p (at most k_max), the first `hits[p]` of
them match the output, and verifying k of them accepts min(hits[p], k). Position 0 is the
prefill step, which verifies nothing.

One table holds every request of one workload, as a replay adds them (prompts drawn from the
replay's generator), for one model pair, method, k_max and ngram lookup sizes; `record.py`
records it from the live engine. With the acceptance it keeps what each proposal looked like
before it was verified: the features of every draft slot at every position (`features`,
what the engine's calibrator scores, `agents.confidence`), so the twin shows a controller
the same confidences the live engine does. Tables are cached on disk (never in git) under a key, a
content hash of all of that, which the file stores too: loading refuses a file whose key or
contents do not match what is asked for, naming the difference.

Temperature > 0: a sampled request's output depends on the random draws, and under
speculation on the k schedule too (the draws fall at other positions), so no table holds
for it. Tables, and the twin, are for greedy requests only and refuse sampled ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np

FORMAT_VERSION = 2
"""Bumped whenever the file layout changes; older files are refused (record them again).
2: the slot features of every proposal."""
_ARRAYS = (
    "prompt_len",
    "output_len",
    "token_len",
    "prompts",
    "tokens",
    "proposed",
    "hits",
    "features",
)


class TableError(ValueError):
    """An acceptance table is missing, corrupt, or was recorded for something else."""


@dataclass(frozen=True)
class TableKey:
    """What an acceptance table is valid for: the same key, the same acceptance."""

    model_id: str
    """Content hash of the target (and the draft model, for draft_model)."""
    method: str
    """Speculation method: ngram or draft_model."""
    k_max: int
    """Drafts proposed per request per step."""
    ngram: tuple[int, int] | None
    """(prompt_lookup_min, prompt_lookup_max) for ngram; None for draft_model."""
    max_model_len: int
    """The engine's length limit, which caps drafts near it."""
    requests: str
    """Content hash of the workload's requests: ids, prompt tokens and output lengths (which
    the prompt seed and style mix determine)."""

    @property
    def digest(self) -> str:
        """The key's content hash: the table's file name in the cache."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def differences(self, other: TableKey) -> list[str]:
        """Each field where `other` differs, as 'field: mine vs other'."""
        return [
            f"{name}: {getattr(self, name)!r} vs {getattr(other, name)!r}"
            for name in asdict(self)
            if getattr(self, name) != getattr(other, name)
        ]


def requests_digest(
    request_ids: Sequence[str], prompts: Sequence[Sequence[int]], output_lens: Sequence[int]
) -> str:
    """Content hash of a workload's requests, in order."""
    h = hashlib.sha256()
    for rid, prompt, output_len in zip(request_ids, prompts, output_lens, strict=True):
        h.update(f"{rid}:{len(prompt)}:{int(output_len)}|".encode())
        h.update(np.asarray(prompt, dtype=np.int64).tobytes())
    return h.hexdigest()[:32]


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))


@dataclass(frozen=True, eq=False)  # arrays do not compare as one truth value
class AcceptanceTable:
    """Per request of a workload: its prompt, its greedy output, and its acceptance per
    position. Ragged arrays are stored flat, request after request."""

    key: TableKey
    """What the table is valid for."""
    request_ids: tuple[str, ...]
    """The requests' ids, as the replay names them ("req-0", ...)."""
    prompt_len: np.ndarray
    """Per request: prompt tokens."""
    output_len: np.ndarray
    """Per request: output tokens the workload asks for (m); positions run over 0..m-1."""
    token_len: np.ndarray
    """Per request: greedy output tokens recorded, m plus up to k_max beyond it, so drafts
    that reach past the end are checked against what the target would have produced."""
    prompts: np.ndarray
    """The prompts' token ids, flat (int32)."""
    tokens: np.ndarray
    """The recorded outputs' token ids, flat (int32)."""
    proposed: np.ndarray
    """Drafts proposed at each output position, flat over requests and positions (int8)."""
    hits: np.ndarray
    """Of those, how many match the output from that position on (int8)."""
    features: np.ndarray
    """The features of each draft slot of each proposal, flat over requests and positions:
    shape (positions, k_max, F), float32 (F = 0 for a method without slot features)."""
    description: str = ""
    """Where the workload came from, for people reading the cache."""

    def __post_init__(self) -> None:
        n = len(self.request_ids)
        for name in ("prompt_len", "output_len", "token_len"):
            if getattr(self, name).shape != (n,):
                raise TableError(f"acceptance table: {name} has shape {getattr(self, name).shape}")
        if len(self.prompts) != int(self.prompt_len.sum()):
            raise TableError("acceptance table: prompts do not match prompt_len")
        if len(self.tokens) != int(self.token_len.sum()):
            raise TableError("acceptance table: tokens do not match token_len")
        positions = int(self.output_len.sum())
        if self.proposed.shape != (positions,) or self.hits.shape != (positions,):
            raise TableError("acceptance table: proposed/hits do not match output_len")
        if np.any(self.token_len < self.output_len):
            raise TableError("acceptance table: fewer recorded tokens than output positions")
        if np.any(self.hits > self.proposed) or np.any(self.proposed > self.key.k_max):
            raise TableError("acceptance table: hits > proposed or proposed > k_max")
        if np.any(self.hits < 0):
            raise TableError("acceptance table: negative hits")
        if self.features.ndim != 3 or self.features.shape[:2] != (positions, self.key.k_max):
            raise TableError(
                f"acceptance table: features have shape {self.features.shape}, expected "
                f"({positions}, {self.key.k_max}, F)"
            )

    # --- reading ---------------------------------------------------------------------------

    @cached_property
    def rows(self) -> dict[str, TableRow]:
        """Every request's prompt, output and acceptance, as plain lists (fast to index), by
        request id (built once per table)."""
        prompts, tokens, positions = (
            _offsets(self.prompt_len),
            _offsets(self.token_len),
            _offsets(self.output_len),
        )
        return {
            rid: TableRow(
                rid,
                tuple(self.prompts[prompts[i] : prompts[i + 1]].tolist()),
                int(self.output_len[i]),
                self.tokens[tokens[i] : tokens[i + 1]].tolist(),
                self.proposed[positions[i] : positions[i + 1]].tolist(),
                self.hits[positions[i] : positions[i + 1]].tolist(),
                self.features[positions[i] : positions[i + 1]],
            )
            for i, rid in enumerate(self.request_ids)
        }

    def slot_samples(self) -> SlotSamples:
        """Every draft slot the target judged, as a calibrator learns from them: slot j of the
        proposal at a position is judged if the slots before it were accepted (hits >= j), and
        accepted if hits > j. Position 0 (the prefill) and empty proposals give none."""
        proposed = self.proposed.astype(np.int64)
        hits = self.hits.astype(np.int64)
        slots = np.arange(self.key.k_max)
        judged = (slots[None, :] < proposed[:, None]) & (slots[None, :] <= hits[:, None])
        row, slot = np.nonzero(judged)
        return SlotSamples(
            features=self.features[row, slot],
            slot=slot,
            accepted=(hits[row] > slot).astype(np.float64),
            row=row,
        )

    # --- files -----------------------------------------------------------------------------

    def save(self, path: Path) -> Path:
        """Write the table to `path` (.npz) with its key, atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        meta = {
            "format": FORMAT_VERSION,
            "key": asdict(self.key),
            "digest": self.key.digest,
            "request_ids": list(self.request_ids),
            "data_sha256": _data_hash(arrays),
            "description": self.description,
        }
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as out:
            np.savez(out, meta=np.array(json.dumps(meta)), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path, expected: TableKey | None = None) -> AcceptanceTable:
        """Read a table, checking it is whole and, given `expected`, recorded for that key.

        Raises TableError naming the file and what is wrong: unreadable or corrupt, another
        format, or recorded for another model, method, k_max, ngram sizes, length limit or
        workload.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("format") != FORMAT_VERSION:
                    raise TableError(
                        f"acceptance table {path} has format {meta.get('format')!r}, this "
                        f"code reads {FORMAT_VERSION} (which also keeps each proposal's slot "
                        f"features): record it again"
                    )
                arrays = {name: data[name] for name in _ARRAYS}
        except FileNotFoundError:
            raise TableError(f"no acceptance table at {path}") from None
        except TableError:
            raise
        except Exception as err:  # a truncated or foreign file fails in many ways
            raise TableError(f"acceptance table {path} is corrupt: {err}") from None
        try:
            raw = dict(meta["key"])
            raw["ngram"] = tuple(raw["ngram"]) if raw["ngram"] is not None else None
            key = TableKey(**raw)
            if key.digest != meta["digest"] or _data_hash(arrays) != meta["data_sha256"]:
                raise TableError(f"acceptance table {path} is corrupt: its contents changed")
            table = cls(
                key=key,
                request_ids=tuple(meta["request_ids"]),
                description=meta.get("description", ""),
                **arrays,
            )
        except TableError:
            raise
        except Exception as err:
            raise TableError(f"acceptance table {path} is corrupt: {err}") from None
        offsets = _offsets(table.prompt_len)
        prompts = [table.prompts[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
        if requests_digest(table.request_ids, prompts, table.output_len) != key.requests:
            raise TableError(f"acceptance table {path} is corrupt: its requests changed")
        if expected is not None and key != expected:
            raise TableError(
                f"acceptance table {path} was recorded for something else ("
                + "; ".join(expected.differences(key)).replace(" vs ", " wanted, table has ")
                + ")"
            )
        return table


class SlotSamples(NamedTuple):
    """The judged draft slots of a table (see `AcceptanceTable.slot_samples`)."""

    features: np.ndarray
    """(N, F): each slot's features."""
    slot: np.ndarray
    """(N,): its draft position j."""
    accepted: np.ndarray
    """(N,): 1.0 if the target accepted it (the slots before it were)."""
    row: np.ndarray
    """(N,): the flat position (request and output position) of its proposal."""


class RecentTables:
    """The last few tables used, by key, so that episodes revisiting a window skip the file
    (and the prompt draws); the oldest is dropped first."""

    SIZE = 16

    def __init__(self) -> None:
        self._tables: dict = {}

    def get(self, key) -> AcceptanceTable | None:
        """The table kept under `key`, or None."""
        return self._tables.get(key)

    def put(self, key, table: AcceptanceTable) -> None:
        """Keep `table` under `key`, dropping the oldest beyond `SIZE`."""
        if len(self._tables) >= self.SIZE:
            self._tables.pop(next(iter(self._tables)))
        self._tables[key] = table


class TableRow(NamedTuple):
    """One request's part of a table (see `AcceptanceTable.row`)."""

    request_id: str
    prompt: tuple[int, ...]
    """Its prompt token ids."""
    output_len: int
    """Output tokens the workload asks for."""
    tokens: list[int]
    """Its recorded greedy output (at least output_len tokens)."""
    proposed: list[int]
    """Drafts proposed at each position 0..output_len-1."""
    hits: list[int]
    """How many of them match the output, at each position."""
    features: np.ndarray
    """The slot features of the proposal at each position, shape (output_len, k_max, F)."""


def _data_hash(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in _ARRAYS:
        array = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{array.dtype.str}:{array.shape}|".encode())
        h.update(array.tobytes())
    return h.hexdigest()
