"""Traces and the Gymnasium environment `SpecDecode-v0` on the live engine."""

import gymnasium

# It runs on a real clock: the same seed gives the same requests but not the same step times.
gymnasium.register(
    id="SpecDecode-v0",
    entry_point="envs.spec_decode_env:SpecDecodeEnv",
    nondeterministic=True,
)
