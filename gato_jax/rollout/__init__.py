"""Acting and generating with a trained Gato: batched rollouts over a KV cache, evaluation, sampling.

- `agent`: `Agent` (jitted act step, constrained action sampling, pinned demonstration prompt).
- `envs`: `EnvBatch` (host-side environments in lockstep), `run_episodes`.
- `sampling`: `Sampler` (text and captions; text ids and `<eos>` only).
- `chunks`: the one-token chunks both feed back into the cache.
- `checkpoint_eval`: `evaluate_checkpoint` (the work of `make eval`); `report`: scores and report files.
- `acting_speed`: `measure_acting` (tokens/s, env steps/s with the agent, raw env steps/s).

Nothing here imports data_pipelines: environments, episodes and held-out windows come in as hooks.
"""
