"""`make bench`: every performance figure of the project in one table (and runs/bench/results.json).

Each benchmark measures its ratio side by side in this one process, taking the median of several
repeats, because these machines are noisy: absolute times move from run to run, ratios much less.
Run some with `--only NAME,...` (names: train_step, stream, decode, acting).

train_step times the step `make train` runs (`train.state.build`: jitted, sharded, donated) on a batch
with the experiment's mixture, plain (`train.sparse=False`) and sparse (the default) alternately, and
reports MFU against the higher of the best measured matmul and the CPU's FMA peak (`train.mfu`).
decode asserts the KV cache's speed-up (>= MIN_DECODE_SPEEDUP) and the same next token. The stream and
acting benchmarks build their data and environments here (data_pipelines) and hand them in.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from data_pipelines import prepare, stream
from data_pipelines.tasks import task_spec_for
from gato_jax import cli
from gato_jax import sharding as sharding_lib
from gato_jax.errors import UsageError
from gato_jax.evaluate import task_hooks
from gato_jax.load import Loaded
from gato_jax.model import Gato
from gato_jax.rollout.acting_speed import measure_acting
from gato_jax.tokenizers.images import patch_intervals
from gato_jax.tokenizers.sequence import ACTION_LOCAL_POS, Modality, TokenSequence, patch_dim_for
from gato_jax.tokenizers.vocab import VocabLayout
from gato_jax.train import loop
from gato_jax.train import state as state_lib
from gato_jax.train.loss import reduce_metrics
from gato_jax.train.mfu import measure_matmul_peak, peak_flops, step_flops

MIN_DECODE_SPEEDUP = 20.0  # Cached decode over full recomputation at a 1024-token context (asserted).

PROG = "python -m gato_jax.bench"


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_list("only", [], "Benchmarks to run (default: all).", flag_values=fv)
    flags.DEFINE_integer("repeats", 5, "Timed repeats per measurement (the median is reported).", flag_values=fv)
    flags.DEFINE_string("experiment", "experiments/atari_mix.py", "Config whose model and batch are benchmarked.",
                        flag_values=fv)
    flags.DEFINE_string("out", "runs/bench/results.json", "Where the results JSON goes.", flag_values=fv)


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of fn() after one warm-up call; fn must block until its result is ready."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def atari_like_batch(layout: VocabLayout, batch: int, seq_len: int, patch_size: int, seed: int = 0,
                     frame_size: int = 80) -> TokenSequence:
    """Random tokens laid out like Atari timesteps: a frame_size-pixel frame's patches, separator, one action
    (80 px in 16-px patches: 25 patches, 27 tokens a timestep)."""
    rng = np.random.default_rng(seed)
    n = (frame_size // patch_size) ** 2
    step = np.array([Modality.IMAGE] * n + [Modality.SEPARATOR, Modality.DISCRETE])
    modality = np.resize(step, (batch, seq_len)).astype(np.int32)
    tokens = np.where(modality == Modality.DISCRETE, layout.discrete_offset + rng.integers(0, 18, modality.shape),
                      np.where(modality == Modality.SEPARATOR, layout.separator_id, layout.special_id("<image>")))
    local_pos = np.resize(np.r_[np.arange(n), -1, ACTION_LOCAL_POS], (batch, seq_len)).astype(np.int32)
    intervals = patch_intervals(frame_size, frame_size, patch_size)
    patch_pos = np.resize(np.concatenate([intervals, np.zeros((2, 4), intervals.dtype)]),
                          (batch, seq_len, 4)).astype(np.int32)
    return TokenSequence(
        tokens=tokens.astype(np.int32), modality=modality, local_pos=local_pos,
        patches=rng.integers(0, 256, (batch, seq_len, patch_dim_for(patch_size)), dtype=np.uint8),
        patch_pos=patch_pos, loss_mask=modality == Modality.DISCRETE,
        segment_ids=np.ones((batch, seq_len), np.int32))


def text_rows(layout: VocabLayout, rows: int, seq_len: int, patch_size: int, seed: int = 1) -> TokenSequence:
    """Packed text: every token a target (as the text source's packed documents, bar their first tokens)."""
    rng = np.random.default_rng(seed)
    shape = (rows, seq_len)
    seq = atari_like_batch(layout, rows, seq_len, patch_size, seed)
    return seq._replace(
        tokens=rng.integers(0, layout.text_size, shape).astype(np.int32),
        modality=np.full(shape, Modality.TEXT, np.int32), local_pos=np.full(shape, -1, np.int32),
        patches=np.zeros_like(seq.patches), patch_pos=np.zeros_like(seq.patch_pos),
        loss_mask=np.arange(seq_len)[None, :].repeat(rows, 0) > 0)


def caption_rows(layout: VocabLayout, rows: int, seq_len: int, patch_size: int, seed: int = 2,
                 image_size: int = 32) -> TokenSequence:
    """Packed captions: <image> patches </image> <bos> 10 caption tokens <eos> (32x32 images in 16-px
    patches: 4 patches)."""
    rng = np.random.default_rng(seed)
    n = (image_size // patch_size) ** 2
    special = [Modality.SPECIAL]
    example = np.array(special + [Modality.IMAGE] * n + special * 2 + [Modality.TEXT] * 10 + special)
    modality = np.resize(example, (rows, seq_len)).astype(np.int32)
    ids = np.array([layout.special_id("<image>")] * (n + 1) + [layout.special_id("</image>"),
                                                             layout.special_id("<bos>")]
                   + [0] * 10 + [layout.special_id("<eos>")])
    tokens = np.resize(ids, (rows, seq_len))
    tokens = np.where(modality == Modality.TEXT, rng.integers(0, layout.text_size, (rows, seq_len)), tokens)
    target = np.resize(np.r_[np.zeros(n + 3, bool), np.ones(11, bool)], (rows, seq_len))
    segment = np.resize(np.repeat(np.arange(1, seq_len // len(example) + 2), len(example)), (rows, seq_len))
    example_pos = np.zeros((len(example), 4), np.int32)
    example_pos[1:n + 1] = patch_intervals(image_size, image_size, patch_size)
    seq = atari_like_batch(layout, rows, seq_len, patch_size, seed)
    return seq._replace(
        tokens=tokens.astype(np.int32), modality=modality, local_pos=np.full((rows, seq_len), -1, np.int32),
        patches=np.where((modality == Modality.IMAGE)[..., None], seq.patches, 0).astype(np.uint8),
        patch_pos=np.resize(example_pos, (rows, seq_len, 4)),
        loss_mask=target, segment_ids=segment.astype(np.int32))


def mixture_batch(config, layout: VocabLayout) -> TokenSequence:
    """A batch with the experiment's mixture: rows of Atari, packed text and packed captions in proportion
    to `config.data.mixture` (largest remainder), so targets and image patches come in its shares."""
    weights = dict(config.data.mixture) or {"atari": 1.0}
    groups = {"text": weights.pop("text", 0.0), "captions": weights.pop("captions", 0.0)}
    groups["atari"] = sum(weights.values())  # Every control task stands in as Atari rows.
    total, b = sum(groups.values()), config.batch_size
    exact = {k: b * w / total for k, w in groups.items()}
    rows = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: rows[k] - exact[k])[: b - sum(rows.values())]:
        rows[k] += 1
    t, p = config.seq_len, config.model.patch_size
    parts = [atari_like_batch(layout, rows["atari"], t, p, frame_size=config.data.frame_size),
             text_rows(layout, rows["text"], t, p),
             caption_rows(layout, rows["captions"], t, p, image_size=config.data.caption_image_size)]
    return TokenSequence(*(np.concatenate(fields) for fields in zip(*parts)))


def _with_train(config, sparse: bool):
    config = config.copy_and_resolve_references()
    config.train.sparse = sparse
    return config


def bench_train_step(config, repeats: int) -> dict:
    """The train step `make train` runs (jitted, sharded, donated: `state.build`), plain and sparse
    (`config.train.sparse`), timed alternately on one mixture batch; MFU against the machine's peak."""
    layout = VocabLayout.from_config(config)
    batch = mixture_batch(config, layout)
    mesh = sharding_lib.make_mesh(config.mesh)
    steps, times, metrics = {}, {"plain": [], "sparse": []}, {}
    for name in times:
        fns, state = state_lib.build(_with_train(config, name == "sparse"), layout.padded_size, mesh)
        steps[name] = [fns, state, loop.to_global(batch, fns.batch_sharding)]
    for i in range(repeats + 1):  # The first round compiles.
        for name, entry in steps.items():
            fns, state, global_batch = entry
            start = time.perf_counter()
            entry[1], out = fns.train_step(state, global_batch)
            jax.block_until_ready((entry[1], out))
            times[name].append(time.perf_counter() - start)
            if i == 0:  # Same parameters, batch and step: both paths must give the same loss.
                metrics[name] = reduce_metrics(jax.device_get(out))
    if abs(metrics["plain"]["loss"] - metrics["sparse"]["loss"]) > 1e-4 * abs(metrics["plain"]["loss"]):
        raise AssertionError(f"sparse step loss {metrics['sparse']['loss']} != plain {metrics['plain']['loss']}")
    peak = peak_flops()
    tokens = batch.tokens.size
    out = {}
    for name, ts in times.items():
        step_s = statistics.median(ts[1:])
        flops = step_flops(_with_train(config, name == "sparse"), layout.padded_size, batch)
        out.update({f"{name}_step_s": step_s, f"{name}_tokens_per_s": tokens / step_s,
                    f"{name}_flops_per_step": flops, f"{name}_mfu": flops / step_s / peak["peak"]})
    out["speedup"] = out["sparse_tokens_per_s"] / out["plain_tokens_per_s"]
    out["tokens_per_s"] = out["sparse_tokens_per_s"]  # What `make train` runs (the stream benchmark reads it).
    out["mfu"] = out["sparse_mfu"]
    out.update({"matmul_peak_flops": peak["measured"], "fma_peak_flops": peak["theoretical"],
                "fma_peak_how": peak["how"], "mfu_denominator": peak["peak"],
                "bf16_over_f32_matmul": measure_matmul_peak(dtype="bfloat16") / measure_matmul_peak(),
                "target_fraction": float(batch.loss_mask[:, 1:].mean()),
                "image_fraction": float((batch.modality == Modality.IMAGE).mean())})
    out["inputs"] = {"model": config.model.preset, "batch": config.batch_size, "context": config.seq_len,
                     "mesh": "x".join(str(v) for v in mesh.shape.values())}
    return out


def bench_decode(config, repeats: int, context: int = 1024) -> dict:
    """Per-token time with the KV cache over full recomputation, at a `context`-token history."""
    layout = VocabLayout.from_config(config)
    model = Gato(config.model, layout.padded_size, rngs=nnx.Rngs(0))
    seq = jax.tree.map(jnp.asarray, atari_like_batch(layout, 1, context, config.model.patch_size,
                                                        frame_size=config.data.frame_size))
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
    if not same or t_full / t_cached < MIN_DECODE_SPEEDUP:
        raise AssertionError(f"KV decode at a {context}-token context: same next token {same}, speed-up "
                             f"{t_full / t_cached:.1f}x (wanted >= {MIN_DECODE_SPEEDUP}x).")
    return {"speedup": t_full / t_cached, "full_s": t_full, "cached_s": t_cached, "same_next_token": same,
            "max_abs_logit_diff": float(jnp.max(jnp.abs(logits_full - logits_cached))),
            "inputs": {"model": config.model.preset, "batch": 1, "context": context}}


def bench_stream(config, repeats: int, train_result: dict | None = None) -> dict:
    """Tokens/s the real data stream delivers over tokens/s the default train step consumes (>= 5 wanted)."""
    dirs = prepare.prepare_all(config)
    train_result = train_result or bench_train_step(config, repeats)
    rates = [stream.measure_stream_throughput(config, seconds=2.0, dirs=dirs) for _ in range(max(1, repeats // 2))]
    produced = statistics.median(rates)
    return {"headroom": produced / train_result["tokens_per_s"], "stream_tokens_per_s": produced,
            "train_tokens_per_s": train_result["tokens_per_s"],
            "inputs": {"model": config.model.preset, "batch": config.batch_size, "context": config.seq_len}}


def bench_acting(config, repeats: int, task: str = "atari_pong", num_envs: int | None = None) -> dict:
    """Batched acting on a real env: tokens/s during rollouts over a plain batched forward pass's tokens/s,
    and env steps/s with the agent in the loop over raw vector-env steps/s (random actions).

    `num_envs` defaults to the experiment's `config.eval.num_envs`: the batch `make eval` acts with.
    """
    num_envs = int(num_envs or config.eval.num_envs)

    layout = VocabLayout.from_config(config)
    model = Gato(config.model, layout.padded_size, rngs=nnx.Rngs(0))
    spec = task_spec_for(config, task)
    loaded = Loaded(model, config, layout, {task: spec}, None, 0, {})
    # Environments only: no dataset is read.
    hooks = task_hooks({}, int(config.data.frame_size), str(config.data.frame_filter))
    speeds = [measure_acting(loaded, task, hooks, num_envs=num_envs, steps=60, seed=i)
              for i in range(max(1, repeats // 2))]
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    batch = jax.tree.map(jnp.asarray, atari_like_batch(layout, num_envs, config.seq_len, config.model.patch_size,
                                                          frame_size=config.data.frame_size))
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


def _main(argv: list[str]) -> int:
    args = cli.parse(argv, _define, prog=PROG, config=False).flags
    unknown = sorted(set(args["only"]) - set(BENCHMARKS))
    if unknown:
        raise UsageError(f"--only names unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}.")
    cli.check_positive_flag("repeats", args["repeats"])
    config = cli.load_experiment(args["experiment"])
    prepare.check_config(config)
    cli.check_devices(config, jax.device_count())
    cli.check_writable_dir(os.path.dirname(os.path.abspath(args["out"])), "--out directory", "pass a writable --out")
    names = args["only"] or list(BENCHMARKS)
    results: dict = {}
    for name in names:
        if name == "stream" and "train_step" in results:
            results[name] = bench_stream(config, args["repeats"], results["train_step"])
        else:
            results[name] = BENCHMARKS[name](config, args["repeats"])
    results["machine"] = {"backend": jax.default_backend(), "devices": str(jax.devices()), "cpus": os.cpu_count()}
    print(format_table({k: v for k, v in results.items() if k != "machine"}))
    os.makedirs(os.path.dirname(os.path.abspath(args["out"])), exist_ok=True)
    with open(args["out"], "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(f"wrote {args['out']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmarks on argv (default sys.argv[1:]); returns the exit status."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
