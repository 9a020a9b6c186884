"""Training: schedule, loss, learning, exact resume, sharded equivalence, restore on another mesh, NaN stop."""
from __future__ import annotations

import json
import math
import os
import shutil
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gato_jax import configs
from gato_jax import sharding as sharding_lib
from gato_jax.load import load_checkpoint
from gato_jax.model import Gato
from gato_jax.model.build import create_sharded_model
from gato_jax.tokenizers.sequence import Modality, TokenSequence
from gato_jax.tokenizers.vocab import VocabLayout
from gato_jax.train import loop, optim
from gato_jax.train import state as state_lib
from gato_jax.train.checkpoint import Checkpointer, CheckpointError
from gato_jax.train.loss import next_token_loss
from gato_jax.train.metrics_writer import read_metrics
from gato_jax.train.synthetic import SyntheticIterator, synthetic_data

LAYOUT = VocabLayout(text_size=64, num_continuous_bins=32, num_discrete=32)


def tiny_config(**overrides):
    c = configs.base_config()
    c.model = configs.model_config("tiny")
    c.seq_len, c.batch_size, c.num_train_steps = 24, 8, 40
    c.log_every, c.eval_every, c.eval_batches, c.checkpoint_every = 5, 20, 1, 20
    c.optimizer.peak_lr, c.optimizer.warmup_steps = 1e-2, 5
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    c.vocab.text_size, c.vocab.num_continuous_bins, c.vocab.num_discrete = 64, 32, 32  # = LAYOUT.
    c.data.text_vocab_size = 64
    # One cap each (a third of positions are targets): the sparse step, with one branch fewer to compile.
    c.train.loss_position_caps, c.train.image_position_caps = (0.5,), (0.5,)
    for key, value in overrides.items():
        c[key] = value
    return c


def one_device_mesh():
    return sharding_lib.make_mesh(tiny_config().mesh, devices=jax.devices()[:1])


def test_schedule_matches_spec():
    opt = configs.base_config().optimizer
    schedule = optim.make_schedule(opt, num_train_steps=1_000_000)
    assert math.isclose(float(schedule(0)), 1e-7, rel_tol=1e-5)
    assert math.isclose(float(schedule(15_000)), 1e-4, rel_tol=1e-5)
    assert math.isclose(float(schedule(1_000_000)), 1e-5, rel_tol=1e-4)  # Decayed by 10x.
    assert (opt.b1, opt.b2, opt.eps, opt.weight_decay, opt.grad_clip) == (0.9, 0.95, 1e-8, 0.1, 1.0)


def test_weight_decay_skips_norms_biases_and_gates():
    model_config = configs.model_config("tiny")
    model_config.smear_keys = True
    model = Gato(model_config, LAYOUT.padded_size, rngs=nnx.Rngs(0))
    _, params = nnx.split(model, nnx.Param)
    flat = {jax.tree_util.keystr(path): decay
            for path, decay in jax.tree_util.tree_flatten_with_path(optim.decay_mask(params))[0]}
    assert flat and all(decay == ("kernel" in key or "embedding" in key) for key, decay in flat.items())
    assert any("smear_logit_H" in key for key in flat), "the gates are parameters, and not decayed"


def test_loss_counts_only_masked_targets():
    seq = SyntheticIterator(LAYOUT, 2, 9).global_batch_at(0)
    batch = jax.tree.map(jnp.asarray, seq)
    vocab = LAYOUT.padded_size
    perfect = jax.nn.one_hot(jnp.roll(batch.tokens, -1, axis=1), vocab) * 100.0
    loss, metrics = next_token_loss(perfect, batch)
    assert float(loss) < 1e-6
    assert float(metrics["loss"][1]) == 2 * 3  # Three action targets per row.
    assert float(metrics["accuracy_discrete_action"][0]) == 6
    uniform = jnp.zeros((2, 9, vocab))
    loss, _ = next_token_loss(uniform, batch)
    np.testing.assert_allclose(float(loss), np.log(vocab), rtol=1e-6)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """40 steps straight, checkpointing at 20 and 40."""
    config = tiny_config()
    workdir = str(tmp_path_factory.mktemp("straight"))
    rows = loop.train_and_evaluate(config, workdir, synthetic_data(config, LAYOUT))
    return config, workdir, rows


def test_training_learns_the_synthetic_task(straight_run):
    _, workdir, rows = straight_run
    metrics = read_metrics(workdir)
    assert [r["step"] for r in metrics] == list(range(5, 45, 5))
    assert metrics[-1]["loss"] < 0.5 * metrics[0]["loss"]
    assert metrics[-1]["eval_accuracy_discrete_action"] > 0.9
    assert all(k in metrics[-1] for k in ("tokens_per_s", "mfu", "learning_rate", "loss_discrete_action"))


def test_resume_continues_exactly(straight_run, tmp_path):
    config, _, straight = straight_run
    loop.train_and_evaluate(config, str(tmp_path), synthetic_data(config, LAYOUT), stop_after=20)
    assert Checkpointer(str(tmp_path)).latest_step() == 20
    resumed = loop.train_and_evaluate(config, str(tmp_path), synthetic_data(config, LAYOUT))
    assert resumed[0]["step"] == 25
    by_step = {r["step"]: r["loss"] for r in straight}
    np.testing.assert_allclose([r["loss"] for r in resumed], [by_step[r["step"]] for r in resumed], rtol=1e-6)


def test_checkpoint_restores_onto_another_mesh(straight_run):
    config, workdir, _ = straight_run
    mesh = sharding_lib.make_mesh(tiny_config(mesh=dict(data=2, fsdp=2, tensor=2)).mesh)
    fns, state = state_lib.build(config, LAYOUT.padded_size, mesh)
    checkpointer = Checkpointer(workdir)
    restored, data_state, meta, step = checkpointer.restore(state_lib.abstract_train_state(config, LAYOUT.padded_size,
                                                                                          mesh).state)
    assert int(restored.step) == step == 40 and data_state == {"index": 40}
    adam = restored.opt_state[1][0]  # chain(clip, adamw): adamw's ScaleByAdamState.
    for param, moment in zip(jax.tree.leaves(restored.params), jax.tree.leaves(adam.mu)):
        assert moment.sharding.is_equivalent_to(param.sharding, param.ndim)  # Moments follow parameters.
    assert any(not p.sharding.is_fully_replicated for p in jax.tree.leaves(restored.params))
    # Compared as JSON, as `loop.check_compatible` does: the saved config's tuples come back as lists.
    assert meta.layout == LAYOUT and json.loads(meta.config.model.to_json()) == json.loads(config.model.to_json())
    one = state_lib.abstract_train_state(config, LAYOUT.padded_size, one_device_mesh()).state
    on_one = checkpointer.restore(one)[0]
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(on_one.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resuming_under_another_train_seed_offset_is_refused():
    """A replicate's data order and rounds follow its offset: resuming one under another would splice two runs."""
    saved = tiny_config()
    replicate = tiny_config()
    replicate.unlock()
    replicate.train_seed_offset = 1
    meta = types.SimpleNamespace(layout=LAYOUT, config=saved)
    loop.check_compatible(meta, saved, LAYOUT, "ckpt")
    with pytest.raises(CheckpointError, match="train_seed_offset=0, this run asks for 1"):
        loop.check_compatible(meta, replicate, LAYOUT, "ckpt")


def damage(step_dir) -> None:
    """Truncates every array file of a saved step, as a disk fault or an interrupted copy would."""
    for path in step_dir.rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(b"")


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(straight_run, tmp_path, caplog):
    """Loading (read-only) uses step 20 and leaves step 40 where it is; training resumes from 20, moves the
    broken 40 aside (kept, not deleted) and runs exactly as the straight run did; one warning line each."""
    config, workdir, straight = straight_run
    shutil.copytree(os.path.join(workdir, "checkpoints"), tmp_path / "checkpoints")
    damage(tmp_path / "checkpoints" / "40")
    loaded = load_checkpoint(str(tmp_path))
    assert loaded.step == 20 and (tmp_path / "checkpoints" / "40").is_dir()
    warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1 and "step 40" in warnings[0] and "falling back to step 20" in warnings[0]
    resumed = loop.train_and_evaluate(config, str(tmp_path), synthetic_data(config, LAYOUT))
    assert resumed[0]["step"] == 25 and (tmp_path / "checkpoints_unreadable" / "40" / "state").is_dir()
    by_step = {r["step"]: r["loss"] for r in straight}
    np.testing.assert_allclose([r["loss"] for r in resumed], [by_step[r["step"]] for r in resumed], rtol=1e-6)
    assert Checkpointer(str(tmp_path)).latest_step() == 40


def test_non_finite_loss_stops_and_keeps_last_checkpoint(straight_run, tmp_path):
    _, workdir, _ = straight_run
    shutil.copytree(os.path.join(workdir, "checkpoints"), tmp_path / "checkpoints")
    exploding = tiny_config(num_train_steps=60)
    exploding.optimizer.peak_lr, exploding.optimizer.warmup_steps = 1e30, 0
    with pytest.raises(loop.NonFiniteLossError, match="last good checkpoint"):
        loop.train_and_evaluate(exploding, str(tmp_path), synthetic_data(exploding, LAYOUT))
    assert Checkpointer(str(tmp_path)).latest_step() == 40


@pytest.fixture(scope="module")
def one_device_grads():
    config = tiny_config()
    batch = SyntheticIterator(LAYOUT, config.batch_size, config.seq_len).global_batch_at(0)
    return config, batch, _loss_and_grads(config, one_device_mesh(), batch)


def test_sparse_step_equals_plain_step(one_device_grads):
    """The config's sparse step (logits gathered under a cap) against the plain one; a batch over every
    cap is tests/sparse_test.py's."""
    config, batch, (sparse_loss, sparse_grads) = one_device_grads
    assert state_lib.StepOptions.from_config(config).sparse
    loss, grads = _loss_and_grads(config, one_device_mesh(), batch, state_lib.StepOptions())
    np.testing.assert_allclose(sparse_loss, loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(sparse_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def with_images(batch: TokenSequence, every: int = 6, length: int = 3) -> TokenSequence:
    """The batch with an image of `length` random patches at every `every`-th position from 1 (no loss there)."""
    is_image = np.zeros(batch.tokens.shape, bool)
    for start in range(1, batch.tokens.shape[1] - length, every):
        is_image[:, start:start + length] = True
    patches = np.random.default_rng(0).integers(0, 256, batch.patches.shape) * is_image[..., None]
    patch_index = np.cumsum(is_image, axis=1) % length
    return batch._replace(modality=np.where(is_image, Modality.IMAGE, batch.modality).astype(np.int32),
                          tokens=np.where(is_image, LAYOUT.special_id("<image>"), batch.tokens).astype(np.int32),
                          local_pos=np.where(is_image, patch_index, batch.local_pos).astype(np.int32),
                          patches=patches.astype(np.uint8), loss_mask=batch.loss_mask & ~is_image)


def test_sparse_step_with_the_resampler_on_a_mesh_equals_the_plain_step():
    """The sparse step runs the resampler only at its outputs (gathered per row under a cap); on a 2x2x2 mesh
    it gives the one-device plain step's loss and gradients."""
    from gato_jax.model.attention import span_ids
    from gato_jax.model.resampler import ROW_CAP_FRACTIONS, slots_from_end
    from gato_jax.model.sparse import caps_from_fractions

    config = tiny_config()
    config.model.image_encoder, config.model.resampler_tokens = "resampler", 1
    batch = with_images(SyntheticIterator(LAYOUT, config.batch_size, config.seq_len).global_batch_at(0))
    slots = slots_from_end(span_ids(*(jnp.asarray(x) for x in (batch.modality, batch.local_pos, batch.segment_ids))))
    outputs_per_row = np.asarray(jnp.sum(slots == 0, axis=1))
    assert 0 < outputs_per_row.max() <= caps_from_fractions(ROW_CAP_FRACTIONS, config.seq_len)[0]  # Gathered.
    loss, grads = _loss_and_grads(config, one_device_mesh(), batch, state_lib.StepOptions())
    mesh = sharding_lib.make_mesh(tiny_config(mesh=dict(data=2, fsdp=2, tensor=2)).mesh)
    sparse_loss, sparse_grads = _loss_and_grads(config, mesh, batch)
    np.testing.assert_allclose(sparse_loss, loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(sparse_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mesh_shape", [
    (2, 2, 2),
    pytest.param((8, 1, 1), marks=pytest.mark.slow),
    pytest.param((1, 8, 1), marks=pytest.mark.slow),
    pytest.param((1, 1, 8), marks=pytest.mark.slow),
])
def test_sharded_loss_and_grads_match_one_device(one_device_grads, mesh_shape):
    config, batch, (reference_loss, reference_grads) = one_device_grads
    data, fsdp, tensor = mesh_shape
    mesh = sharding_lib.make_mesh(tiny_config(mesh=dict(data=data, fsdp=fsdp, tensor=tensor)).mesh)
    loss, grads = _loss_and_grads(config, mesh, batch)
    np.testing.assert_allclose(loss, reference_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def _loss_and_grads(config, mesh, batch: TokenSequence, options: state_lib.StepOptions | None = None):
    """Loss and gradients of freshly created (sharded) parameters; no optimizer involved. The step's
    options come from the config unless given."""
    options = state_lib.StepOptions.from_config(config) if options is None else options
    model = create_sharded_model(config.model, LAYOUT.padded_size, mesh, config.seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    global_batch = loop.to_global(batch, sharding_lib.batch_sharding(mesh))
    rng = jax.random.key_data(jax.random.key(0))

    def loss_fn(p):
        return state_lib._loss_fn(graphdef, rest, p, global_batch, rng, True, options)[0]

    with jax.set_mesh(mesh):
        loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    return float(loss), jax.device_get(grads)


def test_train_and_eval_steps_compile_once(tmp_path, monkeypatch):
    """Seven steps with held-out evaluations (steps 2, 4, 6, 7) and checkpoints (3, 6, 7) between them, then
    a resumed run in the same process: one trace of the train step and one of the eval step, no more
    (donation, saving and restoring must not change what the steps are called with)."""
    monkeypatch.setattr(state_lib, "_loss_fn", chex.assert_max_traces(state_lib._loss_fn, n=2))
    config = tiny_config(num_train_steps=7, eval_every=2, checkpoint_every=3, log_every=1, seed=17)
    loop.train_and_evaluate(config, str(tmp_path), synthetic_data(config, LAYOUT), stop_after=4)
    rows = loop.train_and_evaluate(config, str(tmp_path), synthetic_data(config, LAYOUT))
    assert [r["step"] for r in rows] == [5, 6, 7] and "eval_loss" in rows[-1]
