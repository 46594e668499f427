"""The only package that touches vLLM: the scheduler hook, the live engine, the launcher."""

import os

# One OpenMP thread, and one numba thread for the ngram proposer, per process, set before
# torch and numba load. With more, a draft_model step at batch 32 took 900 ms instead of
# 35 ms, and ngram steps 300 ms instead of 10 ms, whenever another process was busy on this
# 2-core machine: the worker threads spin at barriers waiting for a thread the OS descheduled.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
