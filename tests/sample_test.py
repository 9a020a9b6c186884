"""Sampling: the CLI end to end on a tiny checkpoint (text and captions), greedy determinism, constrained and
filtered sampling, cached generation == full forward, and one-line errors.

The checkpoint is rollout_test's (`tiny_checkpoint`, built once per process).
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from rollout_test import LAYOUT, SPEC, forward, random_state, save_checkpoint, tiny_checkpoint, tiny_config

from gato_jax import sample
from gato_jax.load import CheckpointError, load_checkpoint
from gato_jax.rollout import sampling
from gato_jax.rollout.sampling import Sampler, SamplingParams, caption_prompt, text_prompt
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.sequence import Modality
from gato_jax.tokenizers.vocab import VocabLayout


@pytest.fixture(scope="module")
def workdir():
    return tiny_checkpoint()[0]


@pytest.fixture(scope="module")
def loaded(workdir):
    return load_checkpoint(workdir)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = sample.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_text_cli_continues_the_prompt(workdir, capsys):
    code, out, err = run_cli(capsys, "--workdir", workdir, "--prompt", "to be", "--max_tokens", "6", "--top_k", "20")
    assert code == 0 and out.startswith("to be"), err


def test_caption_cli_reads_and_resizes_an_image(workdir, capsys, tmp_path):
    from data_pipelines import captions

    path = tmp_path / "scene.png"
    scene = captions.draw_scene(captions.Scene(2, "green", "circle", "top"), 48, np.random.default_rng(0))
    Image.fromarray(scene).save(path)
    code, out, err = run_cli(capsys, "--workdir", workdir, "--image", str(path), "--max_tokens", "6", "--top_p", "0.9")
    assert code == 0 and out.endswith("\n"), err


def test_interleaved_prompt_keeps_the_command_line_order(workdir, loaded, capsys, tmp_path):
    from data_pipelines import captions

    paths = []
    scenes = [captions.Scene(2, "green", "circle", "top"), captions.Scene(1, "red", "square", "left")]
    for i, scene in enumerate(scenes):
        paths.append(tmp_path / f"scene{i}.png")
        Image.fromarray(captions.draw_scene(scene, 32, np.random.default_rng(i))).save(paths[-1])
    argv = ["--workdir", workdir, "--image", str(paths[0]), "--prompt=which has more?", "--image", str(paths[1]),
            "--greedy", "--max_tokens", "4"]
    assert sample.ordered_pieces(argv) == [("image", str(paths[0])), ("prompt", "which has more?"),
                                           ("image", str(paths[1]))]
    prompt = sample.interleaved_prompt(sample.ordered_pieces(argv), loaded)
    image_id = LAYOUT.special_id("<image>")
    starts = np.flatnonzero(prompt.tokens == image_id)
    text_at = np.flatnonzero(prompt.modality == Modality.TEXT)
    assert prompt.tokens[0] == LAYOUT.special_id("<bos>") and prompt.tokens[-1] == LAYOUT.special_id("</image>")
    assert starts[0] < text_at.min() and text_at.max() < starts[-1]  # image, text, image.
    assert not prompt.loss_mask.any()
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err


def test_greedy_is_deterministic(workdir, capsys):
    runs = [run_cli(capsys, "--workdir", workdir, "--prompt", "the", "--greedy", "--max_tokens", "6", "--seed", str(s))
            for s in (0, 1)]
    assert runs[0][0] == 0 and runs[0][1] == runs[1][1]


def test_generation_stays_in_text_and_prefill_compiles_once_per_bucket(loaded, monkeypatch):
    monkeypatch.setattr(sampling, "_prefill_fn", chex.assert_max_traces(sampling._prefill_fn, n=1))
    sampler = Sampler(loaded.model, loaded.layout, cache_size=int(loaded.config.seq_len))
    prompts = [text_prompt(loaded.tokenizer, LAYOUT, text, 16) for text in ("to", "the slings and arrows")]
    for i, prompt in enumerate(prompts):  # Both prompts fall into the 16-token bucket: one compile at most.
        (ids,) = sampler.generate([prompt], jax.random.key(i), SamplingParams(temperature=5.0), max_tokens=20)
        assert all(0 <= t < LAYOUT.text_size for t in ids)  # <eos> ends a generation and is not returned.


def test_batched_prompts_of_different_lengths_generate_as_alone(loaded):
    """Rows of different lengths share one left-padded batch; each row's greedy continuation is the one it
    gets alone (padding is never attended to, and no ALiBi gap opens before the continuation)."""
    sampler = Sampler(loaded.model, loaded.layout, cache_size=int(loaded.config.seq_len))
    texts = ("to", "the slings and arrows of outrageous", "or to take")
    prompts = [text_prompt(loaded.tokenizer, LAYOUT, t, 16) for t in texts]
    assert len({p.length for p in prompts}) == 3
    greedy = SamplingParams(temperature=0.0)
    together = sampler.generate(prompts, jax.random.key(0), greedy, max_tokens=6)
    alone = [sampler.generate([p], jax.random.key(0), greedy, max_tokens=6)[0] for p in prompts]
    assert together == alone


def test_greedy_generation_equals_full_forward_argmax(loaded):
    """Padding after the prompt (the bucket) takes cache slots but changes nothing the model sees."""
    sampler = Sampler(loaded.model, loaded.layout, cache_size=int(loaded.config.seq_len))
    prompt = text_prompt(loaded.tokenizer, LAYOUT, "to be or", 16)
    (ids,) = sampler.generate([prompt], jax.random.key(0), SamplingParams(temperature=0.0), max_tokens=8)
    tail = seq_lib.empty(len(ids), 16)._replace(tokens=np.asarray(ids, np.int32),
                                                modality=np.full(len(ids), Modality.TEXT, np.int32),
                                                segment_ids=np.ones(len(ids), np.int32))
    seq = seq_lib.stack([seq_lib.concat([prompt, tail])])
    graphdef, params = nnx.split(loaded.model)
    logits = np.asarray(forward(graphdef, params, seq))[0]
    allowed = sampling.allowed_ids(LAYOUT, logits.shape[-1])
    expected = np.argmax(np.where(allowed, logits, -np.inf), axis=-1)[prompt.length - 1:]
    eos = LAYOUT.special_id("<eos>")
    assert list(expected[:len(ids)]) == ids and (len(ids) == 8 or expected[len(ids)] == eos)


def test_prefill_logits_equal_full_forward_logits(loaded):
    """A prompt shorter than its bucket must look exactly as it does unpadded (no ALiBi gap)."""
    sampler = Sampler(loaded.model, loaded.layout, cache_size=int(loaded.config.seq_len))
    prompt = text_prompt(loaded.tokenizer, LAYOUT, "to be or", 16)
    seq, last_B = sampler._padded([prompt])
    assert seq.tokens.shape[1] > prompt.length  # The bucket really pads.
    cache = sampling.place_like(loaded.model.init_cache(1, sampler.cache_size), sampler.params)
    logits_BxV, _ = sampling._prefill(sampler.graphdef, sampler.params, cache, seq, jnp.asarray(last_B))
    graphdef, params = nnx.split(loaded.model)
    expected = np.asarray(forward(graphdef, params, seq_lib.stack([prompt])))[0, -1]
    np.testing.assert_allclose(np.asarray(logits_BxV)[0], expected, rtol=1e-5, atol=1e-5)


def test_filter_logits_top_k_top_p_and_allowed_ids():
    logits = jnp.asarray([[3.0, 2.0, 1.0, 0.0, 9.0]])
    allowed = jnp.asarray([True, True, True, True, False])
    filtered = jax.jit(sampling.filter_logits)  # One compile for every (temperature, k, p).
    keep = lambda t, k, p: np.isfinite(np.asarray(filtered(logits, allowed, t, k, p)))[0].tolist()
    assert keep(1.0, 0, 1.0) == [True, True, True, True, False]
    assert keep(1.0, 2, 1.0) == [True, True, False, False, False]
    assert keep(1.0, 0, 0.5) == [True, False, False, False, False]  # p(3.0) ~ 0.64 >= 0.5 alone.
    assert keep(1.0, 0, 0.8) == [True, True, False, False, False]
    assert sampling.bucket(1) == 16 and sampling.bucket(17) == 32


def test_caption_prompt_ends_at_bos(loaded):
    image = np.zeros((32, 32, 3), np.uint8)
    prompt = caption_prompt(loaded.tokenizer, LAYOUT, image, 16)
    assert prompt.length == 1 + 4 + 1 + 1 and prompt.tokens[-1] == LAYOUT.special_id("<bos>")


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_missing_checkpoint_is_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "--workdir", str(tmp_path / "nope"), "--prompt", "hi")
    assert code == 2 and "does not exist" in _one_error_line(err)
    code, _, err = run_cli(capsys, "--workdir", str(tmp_path), "--prompt", "hi")
    assert code == 1 and "train first" in _one_error_line(err)


def test_vocabulary_mismatch_is_one_line(capsys, tmp_path):
    config = tiny_config()
    config.vocab.text_size = 128  # The saved layout claims 128 text ids; the saved tokenizer has 64 pieces.
    save_checkpoint(str(tmp_path), config, random_state(tiny_config()), tiny_checkpoint()[2],
                    layout=VocabLayout(text_size=128, num_continuous_bins=32, num_discrete=32))
    code, _, err = run_cli(capsys, "--workdir", str(tmp_path), "--prompt", "hi")
    line = _one_error_line(err)
    assert code == 1 and "64 pieces" in line and "retrain" in line


def test_expected_vocabulary_mismatch_and_missing_meta(workdir, tmp_path):
    with pytest.raises(CheckpointError, match="evaluate with the config the checkpoint was trained with"):
        load_checkpoint(workdir, expected_layout=VocabLayout(text_size=100))

    save_raw_meta(tmp_path / "a", {"source": "synthetic"})
    with pytest.raises(CheckpointError, match=r"lacks metadata \['layout', 'config'\]"):
        load_checkpoint(str(tmp_path / "a"))
    save_raw_meta(tmp_path / "b", {"version": 99, "layout": {}, "config": {}})
    with pytest.raises(CheckpointError, match=r"metadata version 99.*update gato_jax"):
        load_checkpoint(str(tmp_path / "b"))


def save_raw_meta(workdir, meta: dict, state=None) -> None:
    """A checkpoint whose metadata is `meta` as written (other versions, or none of the fields)."""
    import orbax.checkpoint as ocp

    from gato_jax.train.checkpoint import Checkpointer

    manager = Checkpointer(str(workdir)).manager
    state = random_state(tiny_config()) if state is None else state
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({}),
                                            meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()


def test_metadata_of_the_first_version_still_loads(workdir, tmp_path):
    """Checkpoints written before `CheckpointMeta` (JSON strings in a dict) load the same model."""
    import base64

    _, state, tokenizer = tiny_checkpoint()
    config = tiny_config()
    legacy = {"layout": LAYOUT.to_json(), "config": config.to_json(), "task_specs": {"toy_corridor": SPEC.to_json()},
              "text_tokenizer": base64.b64encode(tokenizer.model_proto_bytes()).decode("ascii"),
              "mixture": dict(config.data.mixture), "data_dir": "/somewhere"}
    save_raw_meta(tmp_path, legacy, state)
    old, new = load_checkpoint(str(tmp_path)), load_checkpoint(workdir)
    assert old.meta.version == 0 and new.meta.version == 1
    assert (old.layout, old.task_specs, old.config.to_dict()) == (new.layout, new.task_specs, new.config.to_dict())
    assert old.tokenizer.encode("to be") == new.tokenizer.encode("to be") and old.meta.data["data_dir"] == "/somewhere"
    for a, b in zip(jax.tree.leaves(nnx.state(old.model)), jax.tree.leaves(nnx.state(new.model))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
