"""One OpenMP thread and one numba thread per engine process, set before torch and numba load.

With more, a draft_model step at batch 32 took 900 ms instead of 35 ms, and ngram steps 300 ms
instead of 10 ms, whenever another process was busy on this 2-core machine: the worker threads
spin at barriers waiting for a thread the OS descheduled. Called where an engine or a server
is about to start (not on import), and kept if the environment already says otherwise.
"""

from __future__ import annotations

import os
import sys

THREADS = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def limit_threads() -> None:
    """Set one thread each unless the environment already sets them; if torch is loaded
    already (and read the variable too late), tell it directly."""
    unset = "OMP_NUM_THREADS" not in os.environ
    for name, value in THREADS.items():
        os.environ.setdefault(name, value)
    torch = sys.modules.get("torch")
    if unset and torch is not None:
        torch.set_num_threads(int(THREADS["OMP_NUM_THREADS"]))
