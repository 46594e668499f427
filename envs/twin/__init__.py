"""A fast twin of the live engine for training: vLLM's scheduling in Python, acceptance from
tables recorded on the live engine, steps priced by the same cost models.

- `tables`: per request of a workload, drafts proposed and matching at every output position;
- `scheduler`: vLLM V1's scheduling (token budget, running slots, KV blocks, preemption);
- `engine`: `TwinEngine`, the live engine's interface (the scheduler hook's behaviour on the
  model clock) over the two;
- `record`: recording tables and engine limits from a live engine, cached on disk, and the
  replayer that loads each workload's table;
- `lookahead`: an oracle that tries every k for a few steps on forks of the twin.

Everything the twin runs is pure Python and numpy; only recording builds a live engine.
"""

from envs.twin.engine import TwinEngine
from envs.twin.scheduler import TwinScheduler
from envs.twin.tables import AcceptanceTable, TableError, TableKey

__all__ = ["AcceptanceTable", "TableError", "TableKey", "TwinEngine", "TwinScheduler"]
