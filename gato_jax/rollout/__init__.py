"""Acting and generating with a trained Gato: batched rollouts over a KV cache, evaluation, sampling.

- `agent`: `Agent` (jitted act step, constrained action sampling, pinned demonstration prompt).
- `envs`: `EnvBatch` (host-side environments in lockstep), `run_episodes`.
- `sampling`: `Sampler` (text and captions; text ids and `<eos>` only).
- `evaluate`: `evaluate(config, workdir)` behind `make eval`; `report`: scores and report files.
- `bench`: `measure_acting` (tokens/s, env steps/s with the agent, raw env steps/s).
"""
