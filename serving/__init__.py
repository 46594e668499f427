"""The only package that touches vLLM: the scheduler hook, the live engine, the launcher."""

import os

# One OpenMP thread per process, set before torch loads. With more, a draft_model step at
# batch 32 took 900 ms instead of 35 ms whenever another process was busy on this 2-core
# machine (OpenMP threads spin at barriers waiting for a thread the OS has descheduled).
os.environ.setdefault("OMP_NUM_THREADS", "1")
