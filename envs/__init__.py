"""Traces, the Gymnasium environment `SpecDecode-v0` on the live engine, and
`SpecDecodeTwin-v0` on its twin (`envs.twin`)."""

import gymnasium

# It runs on a real clock: the same seed gives the same requests but not the same step times.
gymnasium.register(
    id="SpecDecode-v0",
    entry_point="envs.spec_decode_env:SpecDecodeEnv",
    nondeterministic=True,
)

# The twin runs on the model clock, so an episode repeats to the token for a seed and actions.
gymnasium.register(
    id="SpecDecodeTwin-v0",
    entry_point="envs.spec_decode_env:SpecDecodeTwinEnv",
)
