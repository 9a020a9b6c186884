"""`make bench`: every performance figure of the project in one table (and runs/bench/results.json).

Each benchmark measures its ratio side by side in this one process, taking the median of several
repeats, because these machines are noisy: absolute times move from run to run, ratios much less.
Run some with `--only NAME,...` (names: train_step, stream, decode, acting).
"""
from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from gato_jax.model import Gato, flops_per_token
from gato_jax.tokenizers.sequence import ACTION_LOCAL_POS, Modality, TokenSequence, patch_dim_for
from gato_jax.tokenizers.vocab import VocabLayout
from gato_jax.train.flops import measure_matmul_peak
from gato_jax.train.loss import next_token_loss

_ONLY = flags.DEFINE_list("only", [], "Benchmarks to run (default: all).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats per measurement (the median is reported).")
_EXPERIMENT = flags.DEFINE_string("experiment", "experiments/atari_mix.py",
                                  "Config whose model and batch are benchmarked.")
_OUT = flags.DEFINE_string("out", "runs/bench/results.json", "Where the results JSON goes.")


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of fn() after one warm-up call; fn must block until its result is ready."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_experiment(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def layout_for(config) -> VocabLayout:
    return VocabLayout(config.vocab.text_size, config.vocab.num_continuous_bins, config.vocab.num_discrete)


def atari_like_batch(layout: VocabLayout, batch: int, seq_len: int, patch_size: int, seed: int = 0) -> TokenSequence:
    """Random tokens laid out like Atari timesteps (25 patches, separator, one action)."""
    rng = np.random.default_rng(seed)
    step = np.array([Modality.IMAGE] * 25 + [Modality.SEPARATOR, Modality.DISCRETE])
    modality = np.resize(step, (batch, seq_len)).astype(np.int32)
    tokens = np.where(modality == Modality.DISCRETE, layout.discrete_offset + rng.integers(0, 18, modality.shape),
                      np.where(modality == Modality.SEPARATOR, layout.separator_id, layout.special_id("<image>")))
    local_pos = np.resize(np.r_[np.arange(25), -1, ACTION_LOCAL_POS], (batch, seq_len)).astype(np.int32)
    patch_pos = np.resize(np.array([[r * 25, r * 25 + 26, c * 25, c * 25 + 26] for r in range(5) for c in range(5)]
                                   + [[0, 0, 0, 0]] * 2), (batch, seq_len, 4)).astype(np.int32)
    return TokenSequence(
        tokens=tokens.astype(np.int32), modality=modality, local_pos=local_pos,
        patches=rng.integers(0, 256, (batch, seq_len, patch_dim_for(patch_size)), dtype=np.uint8),
        patch_pos=patch_pos, loss_mask=modality == Modality.DISCRETE,
        segment_ids=np.ones((batch, seq_len), np.int32))


def bench_train_step(config, repeats: int) -> dict:
    """CPU MFU of a full train step (forward, backward, AdamW) and backward time over forward time."""
    import optax

    from gato_jax.train.optim import make_optimizer

    layout = layout_for(config)
    model = Gato(config.model, layout.padded_size, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    batch = atari_like_batch(layout, config.batch_size, config.seq_len, config.model.patch_size)
    batch = jax.tree.map(jnp.asarray, batch)
    tx = make_optimizer(config.optimizer, config.num_train_steps)
    opt_state = tx.init(params)
    key = jax.random.key(0)

    def loss_fn(p):
        return next_token_loss(nnx.merge(graphdef, p)(batch, deterministic=False, rngs=key), batch)[0]

    forward = jax.jit(loss_fn)
    grad = jax.jit(jax.value_and_grad(loss_fn))

    @jax.jit
    def step(p, o):
        loss, g = jax.value_and_grad(loss_fn)(p)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o, loss

    t_forward = median_time(lambda: forward(params).block_until_ready(), repeats)
    t_grad = median_time(lambda: jax.block_until_ready(grad(params)), repeats)
    t_step = median_time(lambda: jax.block_until_ready(step(params, opt_state)), repeats)
    peak = measure_matmul_peak()
    tokens = config.batch_size * config.seq_len
    achieved = tokens * flops_per_token(config.model, config.seq_len, layout.padded_size) / t_step
    return {
        "mfu": achieved / peak, "backward_over_forward": (t_grad - t_forward) / t_forward,
        "step_s": t_step, "tokens_per_s": tokens / t_step, "achieved_flops": achieved, "matmul_peak_flops": peak,
        "inputs": {"model": config.model.preset, "batch": config.batch_size, "context": config.seq_len},
    }


def bench_decode(config, repeats: int, context: int = 1024) -> dict:
    """Per-token time with the KV cache over full recomputation, at a `context`-token history."""
    layout = layout_for(config)
    model = Gato(config.model, layout.padded_size, rngs=nnx.Rngs(0))
    seq = jax.tree.map(jnp.asarray, atari_like_batch(layout, 1, context, config.model.patch_size))
    graphdef, state = nnx.split(model)
    full = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)[:, -1])
    prefix = TokenSequence(*(f[:, : context - 1] for f in seq))
    last = TokenSequence(*(f[:, context - 1:] for f in seq))
    cache = jax.jit(lambda s, x: nnx.merge(graphdef, s).decode(x, nnx.merge(graphdef, s).init_cache(1, context))[1])(
        state, prefix)
    step = jax.jit(lambda s, x, c: nnx.merge(graphdef, s).decode(x, c)[0][:, -1])
    logits_full = full(state, seq)
    logits_cached = step(state, last, cache)
    same = bool(jnp.argmax(logits_full) == jnp.argmax(logits_cached))
    t_full = median_time(lambda: full(state, seq).block_until_ready(), repeats)
    t_cached = median_time(lambda: step(state, last, cache).block_until_ready(), repeats)
    return {"speedup": t_full / t_cached, "full_s": t_full, "cached_s": t_cached, "same_next_token": same,
            "max_abs_logit_diff": float(jnp.max(jnp.abs(logits_full - logits_cached))),
            "inputs": {"model": config.model.preset, "batch": 1, "context": context}}


def bench_stream(config, repeats: int, train_result: dict | None = None) -> dict:
    """Tokens/s the real data stream delivers over tokens/s the default train step consumes (>= 5 wanted)."""
    from data_pipelines import prepare, stream

    prepare.prepare_all(config)
    train_result = train_result or bench_train_step(config, repeats)
    rates = [stream.measure_stream_throughput(config, seconds=2.0) for _ in range(max(1, repeats // 2))]
    produced = statistics.median(rates)
    return {"headroom": produced / train_result["tokens_per_s"], "stream_tokens_per_s": produced,
            "train_tokens_per_s": train_result["tokens_per_s"],
            "inputs": {"model": config.model.preset, "batch": config.batch_size, "context": config.seq_len}}


def bench_acting(config, repeats: int, task: str = "atari_pong", num_envs: int = 8) -> dict:
    """Batched acting on a real env: tokens/s during rollouts over a plain batched forward pass's tokens/s,
    and env steps/s with the agent in the loop over raw vector-env steps/s (random actions)."""
    from data_pipelines.tasks import task_spec
    from gato_jax.load import Loaded
    from gato_jax.rollout.bench import measure_acting

    layout = layout_for(config)
    model = Gato(config.model, layout.padded_size, rngs=nnx.Rngs(0))
    spec = task_spec(task, frame_size=config.data.frame_size, patch_size=config.model.patch_size)
    loaded = Loaded(model, config, layout, {task: spec}, None, 0, {})
    speeds = [measure_acting(loaded, task, num_envs=num_envs, steps=60, seed=i) for i in range(max(1, repeats // 2))]
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    batch = jax.tree.map(jnp.asarray, atari_like_batch(layout, num_envs, config.seq_len, config.model.patch_size))
    t_forward = median_time(lambda: forward(state, batch).block_until_ready(), repeats)
    forward_tokens_per_s = num_envs * config.seq_len / t_forward
    acting_tokens = statistics.median(s.tokens_per_s for s in speeds)
    agent_steps = statistics.median(s.agent_env_steps_per_s for s in speeds)
    raw_steps = statistics.median(s.raw_env_steps_per_s for s in speeds)
    return {"acting_efficiency": acting_tokens / forward_tokens_per_s, "rollout_over_raw_env": agent_steps / raw_steps,
            "acting_tokens_per_s": acting_tokens, "forward_tokens_per_s": forward_tokens_per_s,
            "agent_env_steps_per_s": agent_steps, "raw_env_steps_per_s": raw_steps,
            "inputs": {"model": config.model.preset, "batch": num_envs, "context": config.seq_len, "task": task}}


BENCHMARKS: dict[str, Callable] = {
    "train_step": bench_train_step, "stream": bench_stream, "decode": bench_decode, "acting": bench_acting}


def format_table(results: dict) -> str:
    rows = [("benchmark", "figure", "value", "inputs")]
    for name, result in results.items():
        inputs = ", ".join(f"{k}={v}" for k, v in result.get("inputs", {}).items())
        for key, value in result.items():
            if key != "inputs":
                rows.append((name, key, f"{value:.4g}" if isinstance(value, float) else str(value), inputs))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def main(argv: list[str]) -> None:
    del argv
    config = load_experiment(_EXPERIMENT.value)
    names = _ONLY.value or list(BENCHMARKS)
    results: dict = {}
    for name in names:
        if name == "stream" and "train_step" in results:
            results[name] = bench_stream(config, _REPEATS.value, results["train_step"])
        else:
            results[name] = BENCHMARKS[name](config, _REPEATS.value)
    results["machine"] = {"backend": jax.default_backend(), "devices": str(jax.devices()), "cpus": os.cpu_count()}
    print(format_table({k: v for k, v in results.items() if k != "machine"}))
    os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
    with open(_OUT.value, "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
