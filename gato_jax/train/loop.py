"""The training loop: resume, dispatch steps ahead of reading metrics, log, evaluate, checkpoint.

`train_and_evaluate(config, workdir, data)` is the whole of training; `gato_jax.main` parses flags,
checks them and builds the data (this package never imports data_pipelines). A run always resumes from
the latest readable checkpoint in its workdir, with the data iterator at exactly the batch it would
have read next (a damaged newest step is reported in one line and the one before it used). SIGTERM
saves and exits cleanly; a non-finite loss stops the run with an error and leaves the last good
checkpoint untouched.
"""
from __future__ import annotations

import json
import logging
import signal
import time

import jax
import ml_collections
import numpy as np
import tqdm

from gato_jax import sharding as sharding_lib
from gato_jax.tokenizers.sequence import TokenSequence
from gato_jax.tokenizers.train_data import TrainData
from gato_jax.train import distributed
from gato_jax.train import state as state_lib
from gato_jax.train.checkpoint import Checkpointer, CheckpointError, CheckpointMeta
from gato_jax.train.loss import reduce_metrics
from gato_jax.train.metrics_writer import MetricsWriter
from gato_jax.train.mfu import peak_flops, step_flops
from gato_jax.train.optim import make_schedule

_LOG = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN or inf; the last good checkpoint is kept."""


class _StopFlag:
    """Set by SIGTERM/SIGINT so the loop saves at a step boundary and exits; handlers restored after.

    On several processes the flag is agreed every step (any process signalled stops all), so no
    process enters the collective save while another dispatches a step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.previous: dict = {}

    def __enter__(self) -> _StopFlag:
        try:
            self.previous = {sig: signal.signal(sig, self._set) for sig in self.SIGNALS}
        except ValueError:  # Not the main thread (some test runners): no handler, no harm.
            self.previous = {}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _set(self, signum, frame):
        _LOG.warning("Signal %d: saving a checkpoint and stopping.", signum)
        self.requested = True

    def agreed(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))


def to_global(batch: TokenSequence, batch_sharding) -> TokenSequence:
    """Process-local numpy rows -> one global jax.Array per field, sharded over (data, fsdp)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(batch_sharding, x), batch)


# Model fields a run may change and still resume: how it computes, not which parameters it has. Fields
# one side lacks (added since the checkpoint was written) are not compared either.
RESUMABLE_MODEL_CHANGES = ("preset", "dtype", "remat", "dropout_rate")


def checkpoint_meta(config: ml_collections.ConfigDict, data: TrainData) -> CheckpointMeta:
    """What every checkpoint of this run carries besides arrays."""
    return CheckpointMeta(data.layout, config, dict(data.task_specs), data.tokenizer, dict(data.info))


def check_compatible(saved: CheckpointMeta, config: ml_collections.ConfigDict, layout, directory: str) -> None:
    """The checkpoint was trained with this model, vocabulary and train_seed_offset; CheckpointError naming the
    first difference."""
    offsets = (int(saved.config.get("train_seed_offset", 0)), int(config.get("train_seed_offset", 0)))
    if offsets[0] != offsets[1]:
        raise CheckpointError(f"Checkpoint in {directory} was trained with train_seed_offset={offsets[0]}, this run "
                              f"asks for {offsets[1]}; pass --config.train_seed_offset={offsets[0]} or a fresh "
                              "--workdir.")
    if saved.layout != layout:
        raise CheckpointError(f"Checkpoint in {directory} uses vocabulary {saved.layout}, but this run's data uses "
                              f"{layout}; use a fresh --workdir or the config it was trained with.")
    want = json.loads(config.model.to_json())
    have = json.loads(saved.config.model.to_json()) if "model" in saved.config else {}
    diffs = [k for k in sorted(set(want) & set(have)) if k not in RESUMABLE_MODEL_CHANGES and want[k] != have[k]]
    if diffs:
        k = diffs[0]
        raise CheckpointError(f"Checkpoint in {directory} is of another model (model.{k} = {have.get(k)!r} there, "
                              f"{want.get(k)!r} here); use a fresh --workdir or the config it was trained with.")


def restore_or_init(config, data: TrainData, workdir: str, mesh):
    """Builds step functions and state, then overwrites the state from the latest readable checkpoint if any."""
    checkpointer = Checkpointer(workdir, config.max_checkpoints_to_keep)
    if checkpointer.latest_step() is not None:
        check_compatible(checkpointer.restore_meta(), config, data.layout, checkpointer.directory)
    fns, state = state_lib.build(config, data.layout.padded_size, mesh)
    if checkpointer.latest_step() is not None:
        abstract = state_lib.abstract_train_state(config, data.layout.padded_size, mesh).state
        state, data_state, _, step = checkpointer.restore(abstract)
        data.train_iter.set_state(data_state)
        _LOG.info("Resumed from step %d in %s", step, checkpointer.directory)
    else:
        state, names = state_lib.warm_start(config, state)
        if names:
            _LOG.info("Warm start: %d parameters from %s", len(names), config.train.warm_start.workdir)
        elif tuple(config.train.get("frozen", ())):
            _LOG.warning("config.train.frozen freezes %s but nothing warm-starts them (config.train.warm_start."
                         "workdir is empty): they stay at their random initialisation. Pass "
                         "--config.train.warm_start.workdir=RUN (e.g. a `make train EXP=prismer:lm` run).",
                         list(config.train.frozen))
    return fns, state, checkpointer


def log_parameter_counts(config, fns, state) -> dict[str, float]:
    """Logs (and returns) trainable and total parameter counts once, at the start of training."""
    counts = state_lib.parameter_counts(config, fns, state)
    _LOG.info("Parameters: %d trainable of %d total (%.3f trainable)", counts.trainable, counts.total,
              counts.trainable_fraction)
    return {"trainable_params": counts.trainable, "total_params": counts.total,
            "trainable_fraction": counts.trainable_fraction}


def _heldout_loss(fns, state, eval_batches: list[TokenSequence]) -> dict[str, float]:
    totals: dict[str, list[float]] = {}
    for batch in eval_batches:
        for name, (total, count) in fns.eval_step(state, to_global(batch, fns.batch_sharding)).items():
            acc = totals.setdefault(name, [0.0, 0.0])
            acc[0] += float(total)
            acc[1] += float(count)
    return {f"eval_{k}": v for k, v in reduce_metrics({k: tuple(v) for k, v in totals.items()}).items()}


class _Throughput:
    """Tokens/s and MFU over the steps since the last log: the FLOPs the steps executed (`step_flops`:
    the sparse path counts the logits and patch ResNet only where it ran them) over the higher of the
    measured matmul peak and the CPU's FMA peak (`train.mfu.peak_flops`)."""

    def __init__(self, config, vocab_size: int):
        self.config, self.vocab_size = config, vocab_size
        self.tokens_per_step = config.batch_size * config.seq_len
        self.peak = None
        self.last_time, self.last_step = time.perf_counter(), None
        self.flops_per_token: list[float] = []  # One entry per step since the last log.

    def count(self, local_batch: TokenSequence) -> None:
        """Records the FLOPs per token of a step's (process-local, numpy) batch."""
        self.flops_per_token.append(step_flops(self.config, self.vocab_size, local_batch) / local_batch.tokens.size)

    def measure(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        per_token = float(np.mean(self.flops_per_token)) if self.flops_per_token else 0.0
        self.flops_per_token = []
        if self.last_step is None:
            self.last_time, self.last_step = now, step
            return {}
        tokens_per_s = (step - self.last_step) * self.tokens_per_step / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        if self.peak is None:
            self.peak = peak_flops()["peak"]  # Fake CPU devices share the host's cores: count it once.
        return {"tokens_per_s": tokens_per_s, "mfu": tokens_per_s * per_token / self.peak}


def _check_finite(step: int, metrics: dict[str, float], checkpointer: Checkpointer) -> None:
    loss = metrics.get("loss", 0.0)
    if not np.isfinite(loss) or not np.isfinite(metrics.get("grad_norm", 0.0)):
        raise NonFiniteLossError(
            f"Loss became {loss} at step {step}; the last good checkpoint (step "
            f"{checkpointer.latest_step()}) is kept in {checkpointer.directory}. Lower "
            "config.optimizer.peak_lr or check the data, then rerun to resume.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, data: TrainData,
                       stop_after: int | None = None) -> list[dict]:
    """Trains to config.num_train_steps on `data`, resuming from workdir; returns the logged metric rows.

    `data` comes from the caller (`gato_jax.main` builds the real stream; tests pass synthetic data).
    `stop_after` ends this run early at that step with a checkpoint, as a preemption would, leaving the
    schedule untouched (tests of exact resumption use it).
    """
    distributed.maybe_initialize(config.distributed)
    mesh = sharding_lib.make_mesh(config.mesh)
    fns, state, checkpointer = restore_or_init(config, data, workdir, mesh)
    log_parameter_counts(config, fns, state)
    return _run(config, workdir, data, fns, state, checkpointer, stop_after or config.num_train_steps)


class _StepReporter:
    """Reads finished steps' metrics: checks them, advances the bar, logs and evaluates on schedule."""

    def __init__(self, config, workdir: str, data: TrainData, fns, checkpointer: Checkpointer):
        self.config, self.fns, self.checkpointer = config, fns, checkpointer
        self.writer = MetricsWriter(workdir)
        self.throughput = _Throughput(config, data.layout.padded_size)
        self.schedule = make_schedule(config.optimizer, config.num_train_steps)
        self.eval_batches = data.eval_batches() if config.eval_every else []
        self.bar = tqdm.tqdm(total=config.num_train_steps, disable=jax.process_index() != 0,
                             desc="train", unit="step", dynamic_ncols=True)
        self.rows: list[dict] = []
        self.tokens_per_s = "-"

    def is_eval_step(self, step: int) -> bool:
        every = self.config.eval_every
        return bool(every) and (step % every == 0 or step == self.config.num_train_steps)

    def report(self, step: int, metrics: dict, state=None) -> None:
        """Blocks on `metrics`; `state` (not yet donated) is needed only on evaluation steps."""
        logged = reduce_metrics(jax.device_get(metrics))
        _check_finite(step, logged, self.checkpointer)
        self.bar.n = step
        self.bar.set_postfix(loss=f"{logged.get('loss', float('nan')):.3f}", tok_s=self.tokens_per_s, refresh=False)
        self.bar.update(0)
        if step % self.config.log_every and step != self.config.num_train_steps:
            return
        logged.update(self.throughput.measure(step))
        if "tokens_per_s" in logged:
            self.tokens_per_s = f"{logged['tokens_per_s']:.0f}"  # Shown in the bar until the next log.
        logged["learning_rate"] = float(self.schedule(step - 1))  # The rate of the update just applied.
        if state is not None and self.is_eval_step(step):
            logged.update(_heldout_loss(self.fns, state, self.eval_batches))
        self.writer.write(step, logged)
        self.rows.append({"step": step, **logged})

    def close(self) -> None:
        self.bar.close()
        self.writer.close()


def _run(config, workdir, data: TrainData, fns, state, checkpointer: Checkpointer, last_step: int) -> list[dict]:
    """Step n+1 is dispatched before step n's metrics are read, so the host never idles the devices.

    Steps that evaluate or checkpoint are read synchronously, before the next dispatch donates the
    state they need.
    """
    with _StopFlag() as stop:
        return _run_steps(config, data, fns, state, checkpointer, last_step, stop,
                          _StepReporter(config, workdir, data, fns, checkpointer))


def _run_steps(config, data: TrainData, fns, state, checkpointer: Checkpointer, last_step: int, stop: _StopFlag,
               reporter: _StepReporter) -> list[dict]:
    meta = checkpoint_meta(config, data)
    pending = None
    try:
        for step in range(int(state.step), min(last_step, config.num_train_steps)):
            local_batch = next(data.train_iter)
            reporter.throughput.count(local_batch)
            batch = to_global(local_batch, fns.batch_sharding)
            data_state = data.train_iter.get_state()
            state, metrics = fns.train_step(state, batch)
            if pending is not None:
                reporter.report(*pending)
            pending = (step + 1, metrics)
            stopping = stop.agreed()
            must_save = (step + 1) % config.checkpoint_every == 0 or step + 1 in (config.num_train_steps, last_step)
            if must_save or stopping or reporter.is_eval_step(step + 1):
                reporter.report(step + 1, metrics, state)
                pending = None
            if must_save or stopping:
                checkpointer.save(step + 1, state, data_state, meta)
            if stopping:
                _LOG.warning("Stopped by signal after step %d; rerun to resume.", step + 1)
                break
        if pending is not None:
            reporter.report(*pending)
    finally:
        reporter.close()
    return reporter.rows
