"""Tests for data_pipelines.sources and data_pipelines.stream, on tiny synthetic episodes, texts, captions.

The synthetic task's observation carries (episode id, step index) as a discrete field, so every
timestep in a window says where it came from: windows, prompts and mixing are checked from tokens.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import types

import numpy as np
import pytest

from data_pipelines import sources, stream
from gato_jax import configs
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.sequence import Modality, TokenSequence
from gato_jax.tokenizers.spec import FieldSpec, TaskSpec
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.vocab import VocabLayout

SEQ_LEN = 70  # 8 whole timesteps of 8 tokens + 6 padding; prompts take 4 timesteps.
STEP = 8  # 4 patches + (episode, step) + separator + action.
LENGTHS = (30, 12, 50, 3, 25)
WORDS = ["red", "green", "blue", "yellow", "purple", "white", "one", "two", "three", "circle", "square", "triangle",
         "circles", "squares", "triangles", "on", "the", "left", "right", "at", "top", "bottom", "to", "be", "or",
         "not", "that", "is", "question"]


def make_spec(name: str = "test/task") -> TaskSpec:
    return TaskSpec(name, observation=(FieldSpec("frame", "image", (32, 32, 1)),
                                       FieldSpec("id", "discrete", (2,), num_values=1000)),
                    action=(FieldSpec("act", "discrete", (), num_values=4),))


def make_episodes(lengths=LENGTHS, first_id: int = 0, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    episodes = []
    for e, n in enumerate(lengths):
        ids = np.stack([np.full(n, first_id + e), np.arange(n)], axis=1)
        episodes.append({"steps": {
            "observation": {"frame": rng.integers(0, 256, (n, 32, 32, 1), dtype=np.uint8), "id": ids},
            "action": {"act": np.arange(n) % 4}, "reward": np.zeros(n, np.float32)},
            "episode_metadata": {"index": e}})
    return episodes


def make_texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 30)))) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> TextTokenizer:
    folder = tmp_path_factory.mktemp("spm")
    (folder / "corpus.txt").write_text("\n".join(make_texts(2000, seed=1)) + "\n")
    return TextTokenizer.train(folder / "corpus.txt", 40, folder / "spm_40")


@pytest.fixture(scope="module")
def layout(tokenizer) -> VocabLayout:
    return VocabLayout(tokenizer.vocab_size, 1024, 1024)


def control(layout, lengths=LENGTHS, first_id=0, prompt_prob=0.25, end=0.5, seed=0) -> sources.ControlSource:
    flat = sources.FlatEpisodes.from_episodes(make_episodes(lengths, first_id, seed), make_spec())
    return sources.ControlSource(make_spec(), layout, flat, SEQ_LEN, prompt_prob=prompt_prob, prompt_end_fraction=end)


def captions_data(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    texts = make_texts(n, seed)
    return [{"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "caption": t[:40].strip()} for t in texts]


def mixed_sources(layout, tokenizer, split_seed: int) -> dict:
    return {
        "task_a": control(layout, first_id=0, seed=split_seed),
        "task_b": control(layout, first_id=100, seed=split_seed),
        "text": sources.TextSource(sources.document_ids(tokenizer, make_texts(50, split_seed)), layout, SEQ_LEN),
        "captions": sources.CaptionSource(captions_data(20, split_seed), tokenizer, layout, SEQ_LEN),
    }


WEIGHTS = {"task_a": 0.4, "task_b": 0.2, "text": 0.2, "captions": 0.2}


def make_data(layout, tokenizer, batch=8, process_index=0, process_count=1, seed=0, num_workers=0):
    settings = stream.StreamSettings(SEQ_LEN, batch, seed, eval_batches=2, process_index=process_index,
                                     process_count=process_count, num_workers=num_workers)
    return stream.make_train_data(layout, mixed_sources(layout, tokenizer, 0), mixed_sources(layout, tokenizer, 7),
                                  WEIGHTS, settings, info={"x": 1})


def timesteps(seq: TokenSequence, layout: VocabLayout) -> list[tuple[int, int, int]]:
    """(position of the timestep's first token, episode id, step index) for each timestep of a row."""
    seps = np.flatnonzero(seq.tokens == layout.separator_id)
    ids = lambda p: int(seq.tokens[p]) - layout.discrete_offset
    return [(int(p) - 6, ids(p - 2), ids(p - 1)) for p in seps]


def source_of(seq: TokenSequence, layout: VocabLayout) -> str:
    if seq.tokens[0] == layout.special_id("<image>") and seq.modality[0] == Modality.SPECIAL:
        return "captions"
    if seq.modality[0] == Modality.IMAGE:
        return "task_a" if timesteps(seq, layout)[0][1] < 100 else "task_b"
    return "text"


def assert_dtypes(seq: TokenSequence, shape: tuple[int, ...]) -> None:
    expected = {"tokens": np.int32, "modality": np.int32, "local_pos": np.int32, "patches": np.uint8,
                "patch_pos": np.int32, "loss_mask": np.bool_, "segment_ids": np.int32}
    for name, dtype in expected.items():
        field = getattr(seq, name)
        assert field.dtype == dtype, name
        assert field.shape[:len(shape)] == shape, name
    assert seq.patches.shape[-1] == seq_lib.patch_dim_for(16)


# ---------------------------------------------------------------------------------------------------------
# Control windows and prompts.


def test_control_windows_align_to_timesteps_with_loss_on_actions(layout):
    source = control(layout, prompt_prob=0.0)
    for i in range(50):
        seq = source(np.random.default_rng(i))
        assert_dtypes(seq, (SEQ_LEN,))
        steps = timesteps(seq, layout)
        starts = [p for p, _, _ in steps]
        assert starts == list(range(0, STEP * len(steps), STEP))  # Whole timesteps from position 0.
        episode = steps[0][1]
        assert len(steps) == min(SEQ_LEN // STEP, LENGTHS[episode])
        assert all(e == episode for _, e, _ in steps)
        assert [t for _, _, t in steps] == list(range(steps[0][2], steps[0][2] + len(steps)))
        used = STEP * len(steps)
        assert np.array_equal(np.flatnonzero(seq.loss_mask), np.arange(STEP - 1, used, STEP))  # Actions only.
        assert np.all(seq.segment_ids[:used] == 1) and np.all(seq.segment_ids[used:] == 0)
        assert np.all(seq.modality[used:] == Modality.PAD)


def test_windows_cover_every_step(layout):
    source = control(layout, prompt_prob=0.0)
    seen = {(e, t) for i in range(400) for _, e, t in timesteps(source(np.random.default_rng(i)), layout)}
    assert seen == {(e, t) for e, n in enumerate(LENGTHS) for t in range(n)}


def split_prompt(seq: TokenSequence, layout: VocabLayout):
    """(prompt timesteps, window timesteps): the prompt is the leading run without loss."""
    steps = timesteps(seq, layout)
    has_loss = [bool(seq.loss_mask[p + STEP - 1]) for p, _, _ in steps]
    k = has_loss.index(True)
    assert all(has_loss[k:])
    return steps[:k], steps[k:]


def test_prompts_rate_source_and_no_loss(layout):
    source = control(layout, prompt_prob=0.25, end=0.5)
    n, prompted, at_end = 800, 0, 0
    for i in range(n):
        seq = source(np.random.default_rng(i))
        prompt, window = split_prompt(seq, layout)
        if not prompt:
            continue
        prompted += 1
        episode, other = window[0][1], prompt[0][1]
        assert other != episode and all(e == other for _, e, _ in prompt)
        assert len(prompt) == min((SEQ_LEN // 2) // STEP, LENGTHS[other])
        assert [t for _, _, t in prompt] == list(range(prompt[0][2], prompt[0][2] + len(prompt)))
        assert len(window) <= (SEQ_LEN - STEP * len(prompt)) // STEP
        assert np.all(seq.segment_ids[:STEP * (len(prompt) + len(window))] == 1)  # Attended with the window.
        at_end += prompt[-1][2] == LENGTHS[other] - 1
    assert 0.2 < prompted / n < 0.3
    assert 0.45 < at_end / prompted < 0.75  # Half by rule, plus uniform windows that happen to end there.


def test_single_episode_task_prompts_from_itself(layout):
    source = control(layout, lengths=(40,), prompt_prob=1.0, end=1.0)
    prompt, window = split_prompt(source(np.random.default_rng(0)), layout)
    assert [t for _, _, t in prompt] == list(range(36, 40)) and window[0][1] == 0


def test_a_round_source_prompts_from_the_expert_episodes(layout):
    """A DAgger round's windows (ids 500+) are prompted by expert demonstrations (ids 0..4), never by rounds."""
    expert = sources.FlatEpisodes.from_episodes(make_episodes(), make_spec())
    rounds = sources.FlatEpisodes.from_episodes(make_episodes((20, 20), first_id=500, seed=1), make_spec())
    source = sources.ControlSource(make_spec(), layout, rounds, SEQ_LEN, prompt_prob=1.0, prompt_end_fraction=0.5,
                                   prompt_episodes=expert)
    prompters = set()
    for i in range(200):
        prompt, window = split_prompt(source(np.random.default_rng(i)), layout)
        assert window[0][1] >= 500 and all(e < 500 for _, e, _ in prompt)
        prompters.add(prompt[0][1])
    assert prompters == set(range(len(LENGTHS)))  # Any expert episode, the window's own kind never.


def test_source_mix_draws_each_source_at_its_weight(layout):
    mix = sources.SourceMix([control(layout, prompt_prob=0.0), control(layout, first_id=100, prompt_prob=0.0)],
                            [0.75, 0.25])
    firsts = [timesteps(mix(np.random.default_rng(i)), layout)[0][1] for i in range(800)]
    assert 0.7 < np.mean(np.asarray(firsts) < 100) < 0.8
    again = [timesteps(mix(np.random.default_rng(i)), layout)[0][1] for i in range(800)]
    assert again == firsts  # A pure function of the generator, as every source.
    for weights in ([1.0], [-1.0, 2.0], [0.0, 0.0]):
        with pytest.raises(ValueError, match="weight"):
            sources.SourceMix([control(layout), control(layout)], weights)


def test_long_timestep_is_refused(layout):
    flat = sources.FlatEpisodes.from_episodes(make_episodes(), make_spec())
    with pytest.raises(ValueError, match="seq_len"):
        sources.ControlSource(make_spec(), layout, flat, STEP - 1, prompt_prob=0.0, prompt_end_fraction=0.5)


# ---------------------------------------------------------------------------------------------------------
# Text and captions.


def test_text_windows_segment_per_document(layout, tokenizer):
    docs = make_texts(30, seed=3)
    ids = sources.document_ids(tokenizer, docs)
    source = sources.TextSource(ids, layout, SEQ_LEN)
    bos, eos = layout.special_id("<bos>"), layout.special_id("<eos>")
    for i in range(30):
        seq = source(np.random.default_rng(i))
        assert_dtypes(seq, (SEQ_LEN,))
        assert np.array_equal(seq.loss_mask, seq.tokens != bos)  # Loss on text and <eos>, not <bos>.
        assert np.all((seq.tokens < layout.text_size) | np.isin(seq.tokens, [bos, eos]))
        # A new segment begins exactly at each <bos> (and at 0, inside a document, when no <bos> is there).
        new_segment = np.diff(seq.segment_ids, prepend=0) == 1
        assert np.array_equal(new_segment[1:], seq.tokens[1:] == bos) and seq.segment_ids[0] == 1
    full = np.asarray(source.window(ids[:len(tokenizer.encode(docs[0])) + 2]).tokens)
    assert tokenizer.decode(full[1:-1]) == docs[0]


def test_short_text_is_padded(layout, tokenizer):
    ids = sources.document_ids(tokenizer, ["red circle"])
    seq = sources.TextSource(ids, layout, SEQ_LEN)(np.random.default_rng(0))
    assert np.all(seq.segment_ids[:len(ids)] == 1) and np.all(seq.segment_ids[len(ids):] == 0)
    assert not seq.loss_mask[len(ids):].any()


def test_captions_packed_whole_each_its_own_segment(layout, tokenizer):
    examples = captions_data(20, seed=5)
    seq = sources.CaptionSource(examples, tokenizer, layout, SEQ_LEN)(np.random.default_rng(0))
    assert_dtypes(seq, (SEQ_LEN,))
    image, close, eos = layout.special_id("<image>"), layout.special_id("</image>"), layout.special_id("<eos>")
    segments = sorted(set(seq.segment_ids.tolist()) - {0})
    assert len(segments) >= 2 and segments == list(range(1, len(segments) + 1))
    used = int(np.sum(seq.segment_ids > 0))
    assert np.all(seq.segment_ids[used:] == 0) and not seq.loss_mask[used:].any()
    captions = {ex["caption"] for ex in examples}
    shortest = min(len(tokenizer.encode(c)) for c in captions) + 4 + 4
    assert SEQ_LEN - used < shortest + max(len(tokenizer.encode(c)) for c in captions)  # Packed tight-ish.
    for s in segments:
        part = np.flatnonzero(seq.segment_ids == s)
        tokens, loss = seq.tokens[part], seq.loss_mask[part]
        assert tokens[0] == image and tokens[5] == close and tokens[-1] == eos
        assert tokenizer.decode(tokens[7:-1]) in captions
        assert np.array_equal(loss, np.arange(len(part)) >= 7)  # Caption and <eos> only.


# ---------------------------------------------------------------------------------------------------------
# The stream: determinism, resumption, sharding, mixing.


def take(iterator, n: int) -> list[TokenSequence]:
    return [next(iterator) for _ in range(n)]


def assert_same(a: list[TokenSequence], b: list[TokenSequence]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for fx, fy in zip(x, y):
            np.testing.assert_array_equal(fx, fy)


def test_batches_shapes_and_determinism(layout, tokenizer):
    first = take(make_data(layout, tokenizer).train_iter, 3)
    assert_dtypes(first[0], (8, SEQ_LEN))
    assert_same(first, take(make_data(layout, tokenizer).train_iter, 3))
    other_seed = take(make_data(layout, tokenizer, seed=1).train_iter, 1)
    assert not np.array_equal(first[0].tokens, other_seed[0].tokens)


def test_resume_gives_the_same_batches(layout, tokenizer):
    data = make_data(layout, tokenizer)
    take(data.train_iter, 5)
    state = json.loads(json.dumps(data.train_iter.get_state()))
    expected = take(data.train_iter, 3)
    fresh = make_data(layout, tokenizer).train_iter
    fresh.set_state(state)
    assert_same(take(fresh, 3), expected)


@pytest.mark.slow  # Spawning a grain worker takes ~5 s.
def test_worker_processes_give_the_same_batches(layout, tokenizer):
    workers = make_data(layout, tokenizer, num_workers=1).train_iter
    try:
        assert_same(take(workers, 3), take(make_data(layout, tokenizer).train_iter, 3))
        state = json.loads(json.dumps(workers.get_state()))
        expected = take(workers, 2)
    finally:
        workers.close()
    fresh = make_data(layout, tokenizer, num_workers=1).train_iter
    try:
        fresh.set_state(state)
        assert_same(take(fresh, 2), expected)
    finally:
        fresh.close()


def test_process_shards_concatenate_to_the_global_batch(layout, tokenizer):
    whole = make_data(layout, tokenizer)
    shards = [make_data(layout, tokenizer, process_index=p, process_count=2) for p in range(2)]
    glue = lambda parts: TokenSequence(*(np.concatenate(f) for f in zip(*parts)))
    batches = [take(s.train_iter, 3) for s in shards]
    assert_same([glue(pair) for pair in zip(*batches)], take(whole.train_iter, 3))
    assert_same([glue(pair) for pair in zip(*(s.eval_batches() for s in shards))], whole.eval_batches())


def test_resume_across_process_counts(layout, tokenizer):
    whole = make_data(layout, tokenizer)
    take(whole.train_iter, 2)
    state = whole.train_iter.get_state()
    half = make_data(layout, tokenizer, process_index=1, process_count=2).train_iter
    half.set_state(state)
    assert_same([TokenSequence(*(f[4:] for f in next(whole.train_iter)))], [next(half)])


def test_eval_batches_are_fixed_and_held_out(layout, tokenizer):
    data = make_data(layout, tokenizer)
    held_out = data.eval_batches()
    assert len(held_out) == 2
    assert_same(held_out, data.eval_batches())
    assert_same(held_out, make_data(layout, tokenizer).eval_batches())
    train = take(data.train_iter, 2)
    assert not any(np.array_equal(h.patches, t.patches) for h in held_out for t in train)


def test_mixture_proportions(layout, tokenizer):
    data = make_data(layout, tokenizer, batch=20)
    counts = {name: 0 for name in WEIGHTS}
    for batch in take(data.train_iter, 10):
        for row in range(20):
            counts[source_of(TokenSequence(*(f[row] for f in batch)), layout)] += 1
    for name, weight in WEIGHTS.items():
        assert abs(counts[name] / 200 - weight) < 0.05, counts


def test_normalized_mixture():
    assert stream.normalized_mixture({"b": 3, "a": 1, "c": 0}) == {"a": 0.25, "b": 0.75}
    with pytest.raises(ValueError, match="mixture"):
        stream.normalized_mixture({"a": -1, "b": 2})
    with pytest.raises(ValueError, match="mixture"):
        stream.normalized_mixture({})


def test_throughput_counts_tokens_over_the_timed_span(layout, tokenizer, monkeypatch):
    """A clock that advances one second per reading: after the warm-up batch, each timed batch (8 rows of
    SEQ_LEN) is read in one second, and the span ends once `seconds` have passed."""
    ticks = iter(range(1000))
    monkeypatch.setattr(stream, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    rate = stream.iterator_throughput(make_data(layout, tokenizer).train_iter, seconds=3.0)
    assert rate == pytest.approx(2 * 8 * SEQ_LEN / 4)  # Batches read after t=1 and t=2; t=3 ends; t=4 divides.


# ---------------------------------------------------------------------------------------------------------
# Caches.


def test_flat_cache_round_trip_and_staleness(tmp_path):
    spec, episodes = make_spec(), make_episodes()
    calls = []
    load = lambda: calls.append(1) or iter(episodes)
    flat = stream.cached_flat_episodes(tmp_path / "flat_train", spec, "v1", load)
    again = stream.cached_flat_episodes(tmp_path / "flat_train", spec, "v1", load)
    assert len(calls) == 1 and isinstance(again.observation["frame"], np.memmap)
    memory = sources.FlatEpisodes.from_episodes(episodes, spec)
    for role in ("observation", "action"):
        for name, x in getattr(memory, role).items():
            np.testing.assert_array_equal(getattr(flat, role)[name], x)
    np.testing.assert_array_equal(flat.starts, memory.starts)
    assert sorted(p.name for p in (tmp_path / "flat_train").iterdir()) == [
        "action_0.npy", "manifest.json", "observation_0.npy", "observation_1.npy", "starts.npy"]
    assert len(pickle.dumps(flat)) < 1000  # Workers reopen the map instead of copying frames.
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(flat)).observation["frame"], memory.observation["frame"])
    stream.cached_flat_episodes(tmp_path / "flat_train", spec, "v2", load)
    assert len(calls) == 2  # Another fingerprint (new data or spec) rebuilds.


def test_text_ids_cached_once(tmp_path, tokenizer):
    calls = []
    docs = lambda: calls.append(1) or ["red circle", "two squares"]
    first = stream.cached_text_ids(tmp_path, "train", tokenizer, docs)
    second = stream.cached_text_ids(tmp_path, "train", tokenizer, docs)
    assert len(calls) == 1 and np.array_equal(first, second) and first.dtype == np.int32
    assert list(first).count(sources.BOS_MARK) == 2 and first[-1] == sources.EOS_MARK


# ---------------------------------------------------------------------------------------------------------
# build_train_data wired to (fake) prepared datasets.


def build(config, **kwargs):
    """`stream.build_train_data` with every source's dataset dir at config.data.dir (as `prepared` lays it)."""
    dirs = {name: config.data.dir for name in [*config.data.mixture, "text"]}
    return stream.build_train_data(config, dirs=dirs, **kwargs)


@pytest.fixture
def prepared(tmp_path, tokenizer, monkeypatch):
    """A data dir with real text files, and fake episode, task and caption loaders in place of the modules
    the stream reads (attributes of `stream`: nothing else is patched)."""
    from data_pipelines import corpus

    paths = corpus.text_paths(tmp_path, tokenizer.vocab_size)
    paths["dir"].mkdir(parents=True)
    paths["model"].write_bytes(tokenizer.model_proto_bytes())
    for split, seed in (("train", 1), ("test", 2)):
        paths[split].write_text("\n\n".join(make_texts(40, seed)) + "\n")
    stored = {"spec": make_spec().to_json(), "splits": {"train": 5, "test": 2}}
    splits = {"train": make_episodes(), "test": make_episodes((20, 20), seed=9)}

    def load_metadata(data_dir, name):
        if name != "fake_task":
            raise FileNotFoundError(name)
        return {"task_spec": stored["spec"], "splits": stored["splits"]}

    fakes = {
        "tasks": types.SimpleNamespace(task_spec_for=lambda config, name:
                                       dataclasses.replace(make_spec(), frame_history=config.data.frame_history)),
        "episodes": types.SimpleNamespace(load_metadata=load_metadata,
                                          load_episodes=lambda data_dir, name, split="train": splits[split]),
        "captions": types.SimpleNamespace(load_captions=lambda data_dir, split: captions_data(10, len(split)),
                                          captions_path=lambda data_dir: tmp_path / "captions"),
    }
    for name, module in fakes.items():
        monkeypatch.setattr(stream, name, module)
    config = configs.base_config()
    config.data.dir = str(tmp_path)
    config.seq_len, config.batch_size, config.eval_batches = SEQ_LEN, 4, 1
    config.vocab.text_size = config.data.text_vocab_size = tokenizer.vocab_size
    config.data.mixture = {"fake_task": 0.5, "text": 0.25, "captions": 0.25}
    return config, stored


def test_build_train_data(prepared, tokenizer, tmp_path):
    config, _ = prepared
    data = build(config, process_index=1, process_count=2)
    batch = next(data.train_iter)
    assert_dtypes(batch, (2, SEQ_LEN))
    assert data.layout == VocabLayout(tokenizer.vocab_size, 1024, 1024)
    assert len(data.eval_batches()) == 1 and data.eval_batches()[0].tokens.shape == (2, SEQ_LEN)
    assert data.task_specs == {"fake_task": make_spec()}
    assert data.tokenizer.model_proto_bytes() == tokenizer.model_proto_bytes()
    info = json.loads(json.dumps(data.info))
    assert info["mixture"] == {"captions": 0.25, "fake_task": 0.5, "text": 0.25}
    assert info["dataset_dirs"]["fake_task"] == str(tmp_path)
    assert (tmp_path / "fake_task" / "flat_train" / "manifest.json").exists()
    assert (tmp_path / "fake_task" / "flat_test" / "manifest.json").exists()


def test_frame_history_reaches_the_task_specs_the_windows_are_cut_with(prepared):
    """`config.data.frame_history` is read into each task's spec, which its sources tokenize (and
    checkpoints store) with; the dataset recorded without it still passes the spec check."""
    config, _ = prepared
    config.data.frame_history = 3
    data = build(config)
    assert data.task_specs["fake_task"].frame_history == 3
    batch = next(data.train_iter)
    assert_dtypes(batch, batch.tokens.shape[:1] + (SEQ_LEN,))


def test_vocab_size_mismatch_names_the_fix(prepared, tokenizer):
    config, _ = prepared
    config.vocab.text_size += 1
    with pytest.raises(ValueError, match=rf"set config.vocab.text_size = {tokenizer.vocab_size}"):
        build(config)


def test_missing_data_names_make_data(prepared, tmp_path):
    config, _ = prepared
    config.data.mixture = {"other_task": 1.0}
    with pytest.raises(FileNotFoundError, match=r"make data EXP="):
        build(config)
    config.data.mixture = {"text": 1.0}
    config.data.text_vocab_size = 77
    with pytest.raises(FileNotFoundError, match=r"spm_77.model.*make data EXP="):
        build(config)


def test_task_spec_mismatch_is_caught_before_training(prepared):
    config, stored = prepared
    spec = make_spec()
    stored["spec"] = TaskSpec(spec.name, (FieldSpec("frame", "image", (48, 48, 1)),), spec.action).to_json()
    with pytest.raises(ValueError, match=r"'fake_task'.*'frame' is image \(48, 48, 1\) in the dataset, image "
                                         r"\(32, 32, 1\) expected.*'id' is absent.*make data EXP="):
        build(config)


def test_patch_size_is_not_part_of_the_stored_spec(prepared):
    config, stored = prepared
    spec = make_spec()
    stored["spec"] = TaskSpec(spec.name, spec.observation, spec.action, patch_size=8).to_json()
    data = build(config)  # A dataset stored under another patch size still serves this one (16).
    assert data.task_specs["fake_task"].patch_size == config.model.patch_size == 16
    assert next(data.train_iter).patches.shape[-1] == seq_lib.patch_dim_for(16)


def test_task_without_test_episodes_holds_out_training_ones(prepared):
    config, stored = prepared
    stored["splits"] = {"train": 5, "test": 0}
    with pytest.warns(UserWarning, match="no test episodes"):
        data = build(config)
    assert len(data.eval_batches()) == 1
