"""PrismerGato, freezing and warm starts: an unchanged decoder at init, what each position sees, frozen
parameters that never move and hold no optimizer state, partial restores that fail loudly.

Array key: B = batch, T = tokens, V = vocabulary.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from gato_jax import configs, sharding
from gato_jax.load import load_checkpoint, one_device_mesh
from gato_jax.model import Gato
from gato_jax.model.prismer import (
    PrismerDims,
    PrismerGato,
    context_mask,
    image_slots,
    load_frozen_experts,
    make_model,
    prismer_config,
)
from gato_jax.perception import FrozenExpertParam, ShapeNet
from gato_jax.perception.shape_expert import save_shape_expert
from gato_jax.rollout import prismer_eval
from gato_jax.rollout.sampling import Sampler, SamplingParams, caption_prompt
from gato_jax.tokenizers import episode
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.sequence import Modality, TokenSequence
from gato_jax.tokenizers.vocab import VocabLayout
from gato_jax.train import loop, partial
from gato_jax.train import state as state_lib
from gato_jax.train.checkpoint import Checkpointer, CheckpointError, CheckpointMeta
from gato_jax.train.loss import next_token_loss
from gato_jax.train.synthetic import synthetic_data

LAYOUT = VocabLayout(text_size=100)
SIDE = 32  # Caption images: 4 patches of 16x16.
DECODER = ("^embed/token", "^embed/local_pos", "^blocks/", "^final_norm/")  # What a text-only run trains.


class WordTokenizer:
    """Stands in for SentencePiece: one id per word (tokenize_caption only calls these two)."""

    def check_layout(self, layout: VocabLayout) -> None:
        del layout

    def encode(self, text: str) -> list[int]:
        return [3 + sum(map(ord, w)) % 90 for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(str(i) for i in ids)


def model_config(experts=("edges", "segments")) -> ml_collections.ConfigDict:
    c = configs.model_config("tiny")
    c.kind = "prismer"
    c.prismer = prismer_config()
    c.prismer.experts = experts
    c.prismer.palette = ((0, 0, 0), (220, 40, 40), (40, 180, 60))
    c.prismer.max_images = 3
    c.prismer.num_queries = 2
    c.prismer.cross_attention_every = 2  # tiny has 2 blocks: one cross-attention layer, then both.
    c.prismer.cross_attention_mlp = True
    return c


def caption(seed: int, text: str) -> TokenSequence:
    image = np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3)).astype(np.uint8)
    return episode.tokenize_caption(WordTokenizer(), LAYOUT, image, text)


def text(words: str) -> TokenSequence:
    ids = [LAYOUT.special_id("<bos>"), *WordTokenizer().encode(words), LAYOUT.special_id("<eos>")]
    t = len(ids)
    return seq_lib.empty(t)._replace(tokens=np.asarray(ids, np.int32), modality=np.full(t, Modality.TEXT, np.int32),
                                     loss_mask=np.ones(t, bool), segment_ids=np.ones(t, np.int32))


def packed(parts: list[TokenSequence], length: int = 40) -> TokenSequence:
    return seq_lib.pad_to(seq_lib.concat([seq_lib.with_segment(p, i + 1) for i, p in enumerate(parts)]), length)


@pytest.fixture(scope="module")
def batch() -> TokenSequence:
    """Row 0: two captions packed (two images, two segments); row 1: a caption then a text segment."""
    return seq_lib.stack([
        packed([caption(0, "two red circles on the left"), caption(1, "one blue square at the top")]),
        packed([caption(2, "three white triangles"), text("to be or not to be")]),
    ])


@pytest.fixture(scope="module")
def gato_run(tmp_path_factory):
    """A tiny Gato's parameters saved as a run's checkpoint (step 7), as a text-only run would leave it."""
    gato = Gato(model_config(), LAYOUT.padded_size, rngs=nnx.Rngs(1))
    params = nnx.state(gato, nnx.Param)
    workdir = str(tmp_path_factory.mktemp("gato_run"))
    saved = state_lib.TrainState(jnp.int32(7), params, optax.sgd(0.1).init(params),
                                 jax.random.key_data(jax.random.key(0)))
    checkpointer = Checkpointer(workdir)
    checkpointer.save(7, saved, {}, CheckpointMeta(LAYOUT, ml_collections.ConfigDict({"model": model_config()})))
    checkpointer.close()
    return gato, workdir


@pytest.fixture(scope="module")
def prismer(gato_run):
    """PrismerGato with its decoder warm-started from the Gato run."""
    model = PrismerGato(model_config(), LAYOUT.padded_size, rngs=nnx.Rngs(2))
    params, names = partial.warm_start(nnx.state(model, nnx.Param), gato_run[1], DECODER)
    nnx.update(model, params)
    assert names and all(n.startswith(("embed/", "blocks/", "final_norm/")) for n in names)
    return model


@pytest.fixture(scope="module")
def forward(prismer):
    """(jitted logits of a PrismerGato state, its graphdef): one compile for every test that runs it."""
    graphdef, _ = nnx.split(prismer)
    return jax.jit(lambda state, seq: nnx.merge(graphdef, state)(seq)), graphdef


def without_images(seq: TokenSequence) -> tuple[TokenSequence, list[np.ndarray]]:
    """Each row with its image positions deleted (padded to the row length), and the kept positions."""
    keeps = [np.flatnonzero(row != Modality.IMAGE) for row in seq.modality]
    rows = [seq_lib.pad_to(TokenSequence(*(f[b, keep] for f in seq)), seq.length) for b, keep in enumerate(keeps)]
    return seq_lib.stack(rows), keeps


def test_warm_started_prismer_starts_as_the_plain_decoder(prismer, forward, gato_run, batch):
    """Zero gates: logits at every non-image position equal Gato's on the sequence without its images."""
    logits_BxTxV = forward[0](nnx.state(prismer), batch)
    reduced, keeps = without_images(batch)
    expected_BxTxV = jax.jit(lambda s: gato_run[0](s))(reduced)
    for b, keep in enumerate(keeps):
        np.testing.assert_allclose(logits_BxTxV[b, keep], expected_BxTxV[b, :len(keep)], atol=2e-5, rtol=2e-5)


def test_open_gates_change_caption_rows_only_after_their_image(prismer, forward, batch):
    """With gates opened, positions that see an image change; the text segment and every position before
    an image ends do not."""
    run, graphdef = forward
    before_BxTxV = run(nnx.state(prismer), batch)
    opened = nnx.merge(graphdef, nnx.state(prismer))
    opened.xattn.attn_gate[...] = jnp.full_like(opened.xattn.attn_gate[...], 0.5)
    opened.xattn.mlp_gate[...] = jnp.full_like(opened.xattn.mlp_gate[...], 0.5)
    after_BxTxV = run(nnx.state(opened), batch)
    seq = jax.tree.map(jnp.asarray, batch)
    sees_BxT = np.asarray(context_mask(seq, image_slots(seq, 3, 4), 4, 1)).any(-1)
    changed_BxT = np.abs(np.asarray(after_BxTxV - before_BxTxV)).max(-1) > 1e-6
    visible_BxT = batch.modality != Modality.IMAGE
    np.testing.assert_array_equal(changed_BxT & visible_BxT, sees_BxT & visible_BxT)
    assert sees_BxT[0].sum() > 0 and sees_BxT[1][batch.segment_ids[1] == 2].sum() == 0


def test_image_slots_pair_frames_within_segments(batch):
    seq = jax.tree.map(jnp.asarray, batch)
    slots = image_slots(seq, 3, 4)
    np.testing.assert_array_equal(slots.valid_BxM, [[True, True, False], [True, False, False]])
    np.testing.assert_array_equal(slots.start_BxM[:, 0], [1, 1])
    # Two captions are two segments: each image is its own previous frame.
    np.testing.assert_array_equal(slots.previous_BxM[0], [0, 1, 2])
    np.testing.assert_array_equal(slots.patches_BxMxRxP[0, 0], batch.patches[0, 1:5])
    atari_like = seq._replace(segment_ids=jnp.ones_like(seq.segment_ids))
    np.testing.assert_array_equal(image_slots(atari_like, 3, 4).previous_BxM[0], [0, 0, 2])


@pytest.mark.slow  # ~20 s; the fast suite checks the same through state.build (test_state_build_...).
def test_freezing_keeps_parameters_bitwise_and_gives_them_no_optimizer_state(prismer, batch):
    graphdef, params, rest = nnx.split(prismer, nnx.Param, ...)
    tx = partial.freeze(optax.adamw(1e-2, weight_decay=0.1), params, DECODER)
    opt_state = jax.jit(tx.init)(params)
    state_names = [partial.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]]
    assert any("xattn/" in n for n in state_names)
    assert not [n for n in state_names if re.search("/(embed/token|embed/local_pos|blocks|final_norm)/", n)]

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(lambda p: next_token_loss(nnx.merge(graphdef, p, rest)(batch), batch)[0])(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    new = params
    for _ in range(3):
        new, opt_state = step(new, opt_state)
    old_leaves, new_leaves = partial.named_leaves(params), partial.named_leaves(new)
    frozen = [n for n in old_leaves if any(re.search(d, n) for d in DECODER)]
    moved = [n for n in old_leaves if not np.array_equal(old_leaves[n], new_leaves[n])]
    assert frozen and not set(frozen) & set(moved)
    assert len(moved) >= 0.9 * (len(old_leaves) - len(frozen))
    assert "xattn/attn_gate" in moved and "vision/resampler/queries" in moved
    counts = partial.parameter_counts(params, DECODER, extra=rest)
    assert 0 < counts.trainable < counts.total


def test_frozen_expert_loads_into_the_model_outside_its_parameters(tmp_path, batch):
    c = model_config(("shapes",))
    c.prismer.cross_attention_every, c.prismer.cross_attention_mlp = 1, False
    model = PrismerGato(c, LAYOUT.padded_size, rngs=nnx.Rngs(0))
    assert model.xattn.attn_gate.shape == (2, 1) and model.xattn.mlp is None
    assert not any("shape_net" in n for n in partial.named_leaves(nnx.state(model, nnx.Param)))
    with pytest.raises(FileNotFoundError, match="train it first"):
        load_frozen_experts(model, str(tmp_path))
    with pytest.raises(ValueError, match="shape_expert_dir"):
        load_frozen_experts(model, "")
    trained = ShapeNet(rngs=nnx.Rngs(5))  # Stands in for a trained expert: only the weights' path matters.
    save_shape_expert(trained, str(tmp_path), {})
    load_frozen_experts(model, str(tmp_path))
    frozen = partial.named_leaves(nnx.state(model, FrozenExpertParam))
    for name, weight in partial.named_leaves(nnx.state(trained)).items():
        np.testing.assert_array_equal(frozen["vision/shape_net/" + name], weight)
    context_BxCxD, mask_BxTxC = jax.jit(lambda s: model.encode(s))(batch)
    assert context_BxCxD.shape == (2, 3 * (4 + 2), 64) and mask_BxTxC.shape == (2, 40, 18)


def test_partial_optimizer_state_follows_parameter_shardings(prismer):
    """Moments of trainable parameters take their parameters' shardings; frozen ones stay masked."""
    mesh = jax.make_mesh((1, 2, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:2])
    params = nnx.state(prismer, nnx.Param)
    shardings = sharding.param_shardings(jax.eval_shape(lambda: params), mesh)
    params_shardings = jax.tree.map(lambda v: v.sharding if hasattr(v, "sharding") else v, shardings)
    tx = partial.freeze(optax.adamw(1e-3), params, DECODER)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_shardings = partial.opt_state_shardings(tx, jax.eval_shape(tx.init, params), params_shardings, replicated)
    named = partial.named_leaves(opt_shardings)
    mu = {n: s for n, s in named.items() if "/mu/" in n}
    assert mu and not any("/blocks/" in n for n in mu)
    kernel = next(n for n in mu if n.endswith("xattn/attn/query/kernel"))
    assert mu[kernel].spec == partial.named_leaves(params_shardings)["xattn/attn/query/kernel"].spec
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    assert jax.tree.leaves(opt_state)


def test_warm_start_names_what_does_not_match(gato_run, tmp_path):
    model = PrismerGato(model_config(), LAYOUT.padded_size, rngs=nnx.Rngs(3))
    params = nnx.state(model, nnx.Param)
    with pytest.raises(ValueError, match="match no parameter"):
        partial.warm_start(params, gato_run[1], ("^decoder/",))
    with pytest.raises(CheckpointError, match="not in"):
        partial.warm_start(params, gato_run[1], ("^xattn/",))
    wide = model_config()
    wide.mlp_dim = 96
    other = nnx.state(PrismerGato(wide, LAYOUT.padded_size, rngs=nnx.Rngs(3)), nnx.Param)
    with pytest.raises(CheckpointError, match=r"blocks/mlp/up/kernel: checkpoint \(2, 64, 128\) vs model"):
        partial.warm_start(other, gato_run[1], ("^blocks/",))
    with pytest.raises(CheckpointError, match="No checkpoints"):
        partial.warm_start(params, str(tmp_path / "nothing"), DECODER)


def test_config_errors_name_the_field():
    c = model_config()
    c.kind = "vit"
    with pytest.raises(ValueError, match="model.kind"):
        make_model(c, 10, rngs=nnx.Rngs(0))
    c = model_config()
    c.prismer.cross_attention_every = 3
    with pytest.raises(ValueError, match="cross_attention_every=3 must divide model.num_layers=2"):
        PrismerDims.from_config(c)
    c = model_config(())
    c.prismer.rgb_tokens = False
    with pytest.raises(ValueError, match="encoder would be empty"):
        PrismerDims.from_config(c)


# ---------------------------------------------------------------------------------------------------------
# Wiring: state.build, the training loop, loading, evaluation.


def train_config(**warm_start) -> ml_collections.ConfigDict:
    """A tiny PrismerGato run on one device with its decoder frozen (and warm-started when asked); the plain
    step (one branch to compile), shared by every test here through the step cache."""
    c = configs.base_config()
    c.model = model_config()
    c.seq_len, c.batch_size, c.num_train_steps = 40, 2, 4
    c.log_every, c.eval_every, c.checkpoint_every = 1, 0, 2
    c.optimizer.peak_lr, c.optimizer.warmup_steps = 1e-2, 1
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    c.vocab.text_size = c.data.text_vocab_size = LAYOUT.text_size
    c.train.sparse = False
    c.train.frozen = DECODER
    c.train.warm_start.update(warm_start)
    return c


def decoder_names(names) -> list[str]:
    return [n for n in names if any(re.search(d, n) for d in DECODER)]


def test_state_build_warm_starts_and_freezes_the_decoder_with_no_optimizer_state(gato_run, batch):
    config, mesh = train_config(workdir=gato_run[1], params=DECODER), one_device_mesh()
    fns, state = state_lib.build(config, LAYOUT.padded_size, mesh)
    assert state_lib.warm_start(train_config(), state)[1] == []  # No source: nothing read.
    fresh = partial.named_leaves(jax.device_get(state.params))
    state, names = state_lib.warm_start(config, state)
    warm = partial.named_leaves(jax.device_get(state.params))
    source = partial.named_leaves(nnx.state(gato_run[0], nnx.Param))
    assert sorted(names) == sorted(decoder_names(fresh))
    for name in fresh:  # Only the named parameters were read.
        np.testing.assert_array_equal(warm[name], source[name] if name in names else fresh[name])
    opt_names = [partial.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
    assert any("xattn/" in n for n in opt_names) and not decoder_names(opt_names)
    abstract = state_lib.abstract_train_state(config, LAYOUT.padded_size, mesh).state
    assert jax.tree.structure(abstract.opt_state) == jax.tree.structure(state.opt_state)  # What restores fill.
    for _ in range(2):
        state, _ = fns.train_step(state, loop.to_global(batch, fns.batch_sharding))
    after = partial.named_leaves(jax.device_get(state.params))
    moved = {n for n in warm if not np.array_equal(warm[n], after[n])}
    assert not set(names) & moved and {"xattn/attn_gate", "vision/resampler/queries"} <= moved
    counts = state_lib.parameter_counts(config, fns, state)
    assert counts.trainable == sum(x.size for n, x in warm.items() if n not in names)
    assert counts.total == sum(x.size for x in warm.values()) and 0 < counts.trainable_fraction < 0.5


@pytest.mark.slow  # ~40 s: two runs (model init and step compile each); state.build is covered in the fast suite.
def test_training_loop_warm_starts_a_fresh_run_resumes_and_loads(gato_run, tmp_path, caplog):
    """train_and_evaluate: counts logged, decoder warm-started and never trained, masked optimizer state
    checkpointed and restored on resume; load_checkpoint gives the PrismerGato back."""
    config = train_config(workdir=gato_run[1], params=DECODER)
    workdir = str(tmp_path / "run")
    with caplog.at_level("INFO", logger="gato_jax.train.loop"):
        loop.train_and_evaluate(config, workdir, synthetic_data(config, LAYOUT), stop_after=2)
    assert "trainable of" in caplog.text and "Warm start: " in caplog.text
    rows = loop.train_and_evaluate(config, workdir, synthetic_data(config, LAYOUT))
    assert [r["step"] for r in rows] == [3, 4]
    loaded = load_checkpoint(workdir)
    assert isinstance(loaded.model, PrismerGato) and loaded.step == 4
    trained = partial.named_leaves(nnx.state(loaded.model, nnx.Param))
    source = partial.named_leaves(nnx.state(gato_run[0], nnx.Param))
    for name in decoder_names(trained):
        np.testing.assert_array_equal(trained[name], source[name])
    summary = prismer_eval.parameter_summary(loaded.model, DECODER)
    assert summary["trainable_fraction"] == pytest.approx(
        sum(x.size for n, x in trained.items() if n not in decoder_names(trained)) / summary["total_params"])


def test_greedy_full_passes_equal_cached_greedy_sampling(gato_run):
    """prismer_eval decodes without a cache; for a Gato it picks exactly what the cached Sampler picks."""
    gato = gato_run[0]
    images = np.random.default_rng(4).integers(0, 256, (3, SIDE, SIDE, 3)).astype(np.uint8)
    prompts = [caption_prompt(WordTokenizer(), LAYOUT, im, 16) for im in images]
    cached = Sampler(gato, LAYOUT, cache_size=64).generate(prompts, jax.random.key(0), SamplingParams(0.0), 6)
    assert prismer_eval.greedy_ids(gato, LAYOUT, prompts, 6) == cached
    texts = prismer_eval.greedy_captions(gato, LAYOUT, WordTokenizer(), list(images), 16, 6)
    assert texts == [" ".join(map(str, row)) for row in cached]
    scores = prismer_eval.caption_scores([texts[0], "no", texts[2]], [{"caption": t} for t in texts],
                                         lambda ex: "seen_pairs")
    assert scores["accuracy_seen_pairs"] == pytest.approx(2 / 3) and scores["examples"] == 3
