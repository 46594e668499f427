"""The only package that touches vLLM: the scheduler hook, the live engine, the launcher; and
the vLLM-free parts both the hook and the twin build on (`step_control`, `engine`,
`limits`, `config`)."""
