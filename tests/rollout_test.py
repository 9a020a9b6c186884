"""Rollouts: valid action ids, one compile, cache == full forward (prompted, ring, resets), evaluation files.

A tiny model with random weights is saved as a real checkpoint (train state + metadata as the trainer
writes it) once per process (`tiny_checkpoint`, shared with sample_test). The environment is a small
deterministic corridor written here, with TaskSpec-shaped observations (an image, discrete and
continuous fields) and actions of both kinds.

Array key: B = batch, T = tokens, V = vocabulary, A = action tokens.
"""
from __future__ import annotations

import atexit
import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
import types

import chex
import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines import captions, sources
from gato_jax import configs
from gato_jax.load import checkpoint_steps, load_checkpoint, one_device_mesh
from gato_jax.model import cache as cache_lib
from gato_jax.rollout import acting_speed, report
from gato_jax.rollout import agent as agent_lib
from gato_jax.rollout import checkpoint_eval as eval_lib
from gato_jax.rollout.agent import Agent, demonstration_prompts
from gato_jax.rollout.envs import EnvBatch, run_episodes
from gato_jax.tokenizers import episode as episode_lib
from gato_jax.tokenizers import images as images_lib
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.sequence import Modality, TokenSequence
from gato_jax.tokenizers.spec import FieldKind, FieldSpec, TaskSpec
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.train_data import TrainData
from gato_jax.tokenizers.vocab import VocabLayout
from gato_jax.train import loop
from gato_jax.train import state as state_lib
from gato_jax.train.checkpoint import Checkpointer

LAYOUT = VocabLayout(text_size=64, num_continuous_bins=32, num_discrete=32)
TASK = "toy_corridor"
SPEC = TaskSpec(
    name=TASK,
    observation=(FieldSpec("frame", FieldKind.IMAGE, (16, 16, 1)),
                 FieldSpec("pos", FieldKind.DISCRETE, (2,), num_values=8),
                 FieldSpec("speed", FieldKind.CONTINUOUS, ())),
    action=(FieldSpec("move", FieldKind.DISCRETE, (), num_values=3),
            FieldSpec("push", FieldKind.CONTINUOUS, (2,), companded=False, scale=2.0)),
)
SEQ_LEN = 64  # The cache: 8 timesteps of 8 tokens; prompts up to 4 timesteps.
B = 2


class Corridor(gymnasium.Env):
    """Walk right from a seeded start to cell 7 (+1, ends the episode); -0.1 per step otherwise."""

    GOAL = 7

    def __init__(self, max_steps: int = 100):
        self.max_steps = max_steps
        self.observation_space = gymnasium.spaces.Dict({
            "frame": gymnasium.spaces.Box(0, 255, (16, 16, 1), np.uint8),
            "pos": gymnasium.spaces.MultiDiscrete([8, 8]),
            "speed": gymnasium.spaces.Box(-1.0, 1.0, (), np.float32)})
        self.action_space = gymnasium.spaces.Discrete(3)

    def _obs(self) -> dict:
        frame = np.zeros((16, 16, 1), np.uint8)
        frame[:, 2 * self.x:2 * self.x + 2] = 255
        return {"frame": frame, "pos": np.array([self.x, self.GOAL]), "speed": np.float32(self.speed)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.speed, self.t = int(self.np_random.integers(0, 4)), 0.0, 0
        return self._obs(), {}

    def step(self, action):
        self.speed = float(int(action) - 1)
        self.x = int(np.clip(self.x + int(action) - 1, 0, self.GOAL))
        self.t += 1
        done = self.x == self.GOAL
        return self._obs(), 1.0 if done else -0.1, done, self.t >= self.max_steps, {}


def corridor_episode(start: int, length: int) -> dict:
    """A demonstration in dataset layout: walk right (move=2) for `length` steps."""
    xs = np.clip(start + np.arange(length), 0, 7)
    frames = np.zeros((length, 16, 16, 1), np.uint8)
    for i, x in enumerate(xs):
        frames[i, :, 2 * x:2 * x + 2] = 255
    return {"steps": {"observation": {"frame": frames, "pos": np.stack([xs, np.full(length, 7)], 1),
                                      "speed": np.ones(length, np.float32)},
                      "action": {"move": np.full(length, 2), "push": np.zeros((length, 2), np.float32)}}}


TASK_HOOKS = eval_lib.TaskHooks(
    make_env=lambda name, *, sticky_actions, max_steps, seed: Corridor(max_steps),
    action_to_env=lambda name, action: int(action["move"]),
    load_episodes=lambda name, split: [corridor_episode(0, 7), corridor_episode(2, 5)],
    load_metadata=lambda name: {"expert_return": 0.5, "random_return": -2.0,
                                "expert_returns": [0.0, 1.0], "random_returns": [-3.0, -2.0, -1.0]},
    windows=sources.control_windows,
)
SOURCES = eval_lib.EvalSources((TASK,), captions=True, text=True)


def tiny_config():
    c = configs.base_config()
    c.model = configs.model_config("tiny")
    c.seq_len, c.batch_size, c.num_train_steps = SEQ_LEN, 2, 10
    c.mesh.data = c.mesh.fsdp = c.mesh.tensor = 1
    c.vocab.text_size, c.vocab.num_continuous_bins, c.vocab.num_discrete = 64, 32, 32
    c.data.text_vocab_size = 64
    c.data.mixture = {TASK: 0.5, "text": 0.25, "captions": 0.25}
    c.eval.episodes, c.eval.num_envs, c.eval.max_steps = 3, B, 12
    c.eval.caption_examples, c.eval.text_batches = 3, 2
    return c


def caption_examples(n: int = 3) -> list[dict]:
    """Two scenes (one of a novel colour-shape pair) and a digit, in the captions dataset's layout."""
    scenes = [captions.Scene(1, "red", "triangle", "left"), captions.Scene(2, "green", "circle", "top")]
    rng = np.random.default_rng(0)
    out = [{"image": captions.draw_scene(s, 32, rng), "caption": captions.caption(s), "source": "scene",
            "novel": s.novel} for s in scenes]
    digit = captions.render_digit(np.eye(8, dtype=np.uint8) * 16, 32)
    out.append({"image": digit, "caption": captions.digit_caption(7), "source": "digit", "novel": False})
    return out[:n]


TEXT = ["to be or not to be that is the question", "whether tis nobler in the mind to suffer",
        "the slings and arrows of outrageous fortune", "or to take arms against a sea of troubles",
        "and by opposing end them to die to sleep", "no more and by a sleep to say we end",
        "the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs"]
DATA_HOOKS = eval_lib.DataHooks(load_captions=lambda split: caption_examples(), load_text_split=lambda split: TEXT,
                                unigram_baseline=lambda vocab_size: 50.0, text_windows=sources.text_windows,
                                parse_caption=captions.parse_caption)


def train_tokenizer(directory: str) -> TextTokenizer:
    corpus = os.path.join(directory, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(captions.caption_training_text(400) + TEXT * 20))
    return TextTokenizer.train(corpus, LAYOUT.text_size, os.path.join(directory, "spm"))


def random_state(config, seed: int = 0) -> state_lib.TrainState:
    """A TrainState of the trainer's structure with random parameters, made from shapes alone.

    `state_lib.build` would compile the random initialisers (~15 s for the tiny preset on a loaded
    2-core machine); the slow test below checks that a checkpoint from `build` loads the same way.
    """
    abstract = state_lib.abstract_train_state(config, LAYOUT.padded_size, one_device_mesh()).state
    rng = np.random.default_rng(seed)

    def fill(x):
        value = rng.normal(0.0, 0.3, x.shape) if jnp.issubdtype(x.dtype, jnp.floating) else np.zeros(x.shape)
        return jax.device_put(value.astype(x.dtype), x.sharding)

    return jax.tree.map(fill, abstract)


def save_checkpoint(workdir: str, config, state, tokenizer: TextTokenizer | None, layout: VocabLayout = LAYOUT,
                    step: int = 1) -> None:
    """Saves `state` with the metadata training writes (loop.checkpoint_meta over what the stream hands over)."""
    data = TrainData(layout=layout, train_iter=None, eval_batches=list, task_specs={TASK: SPEC}, tokenizer=tokenizer,
                     info={"mixture": dict(config.data.mixture)})
    Checkpointer(workdir).save(step, state, {}, loop.checkpoint_meta(config, data))


@functools.cache
def tiny_checkpoint() -> tuple[str, state_lib.TrainState, TextTokenizer]:
    """(workdir, state, tokenizer): random weights saved at step 1, once per test process."""
    workdir = tempfile.mkdtemp(prefix="gato_rollout_")
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    tokenizer = train_tokenizer(workdir)
    state = random_state(tiny_config())
    save_checkpoint(workdir, tiny_config(), state, tokenizer)
    return workdir, state, tokenizer


@pytest.fixture(scope="module")
def loaded():
    return load_checkpoint(tiny_checkpoint()[0])


# ---------------------------------------------------------------------------------------------------------
# Loading.


def test_load_restores_params_layout_specs_and_tokenizer(loaded):
    _, state, _ = tiny_checkpoint()
    params = nnx.split(loaded.model, nnx.Param, ...)[1]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert loaded.layout == LAYOUT and loaded.task_specs == {TASK: SPEC} and loaded.step == 1
    assert loaded.tokenizer.vocab_size == LAYOUT.text_size and loaded.config.seq_len == SEQ_LEN


@pytest.mark.slow
def test_checkpoint_written_from_build_loads(tmp_path):
    """The fast fixture fakes the state from shapes; this saves one from `state.build`, as training does."""
    config = tiny_config()
    _, state = state_lib.build(config, LAYOUT.padded_size, one_device_mesh())
    save_checkpoint(str(tmp_path), config, state, tiny_checkpoint()[2], step=7)
    loaded = load_checkpoint(str(tmp_path))
    params = nnx.split(loaded.model, nnx.Param, ...)[1]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert loaded.step == 7


# ---------------------------------------------------------------------------------------------------------
# Acting.


def test_action_tokens_follow_the_spec():
    tokens = agent_lib.action_tokens(SPEC, LAYOUT)
    d, c = LAYOUT.discrete_offset, LAYOUT.continuous_range
    assert tokens.lo_A.tolist() == [d, c[0], c[0]] and tokens.hi_A.tolist() == [d + 3, c[1], c[1]]
    assert tokens.modality_A.tolist() == [Modality.DISCRETE, Modality.CONTINUOUS, Modality.CONTINUOUS]


def _prompt(agent: Agent) -> TokenSequence:
    episodes = TASK_HOOKS.load_episodes(TASK, "test")
    return demonstration_prompts(SPEC, LAYOUT, episodes, agent.max_prompt_tokens, B, np.random.default_rng(0))


def test_demonstration_prompts_are_episode_ends_in_whole_timesteps(loaded):
    agent = Agent(loaded.model, SPEC, LAYOUT, batch_size=B, cache_size=SEQ_LEN)
    prompt = _prompt(agent)
    assert agent.max_prompt_tokens == 32 and prompt.tokens.shape == (B, 32)
    assert not prompt.loss_mask.any()
    seps = prompt.tokens == LAYOUT.separator_id
    assert (seps.sum(1) == 4).all()  # Four timesteps of 8 tokens each.
    moves = prompt.tokens[:, 5::8] - LAYOUT.discrete_offset
    assert (moves == 2).all()  # The demonstrations' last actions: walk right.


def test_agent_samples_valid_ids_and_compiles_once(loaded, monkeypatch):
    """30 steps over a ring that wraps several times, random row resets, a fresh cache and a prompted
    one: at most one trace of the act step (none if an earlier test compiled these shapes)."""
    monkeypatch.setattr(agent_lib, "_act_fn", chex.assert_max_traces(agent_lib._act_fn, n=1))
    agent = Agent(loaded.model, SPEC, LAYOUT, batch_size=B, cache_size=SEQ_LEN, temperature=3.0)
    envs = [Corridor() for _ in range(B)]
    observations = [env.reset(seed=i)[0] for i, env in enumerate(envs)]
    key, rng, ids = jax.random.key(0), np.random.default_rng(0), []
    for step in range(30):
        if step in (0, 15):
            cache = agent.initial_state(None if step == 0 else _prompt(agent))
        key, act_key = jax.random.split(key)
        reset_B = rng.random(B) < 0.2
        observations = [env.reset(seed=step)[0] if r else o for env, o, r in zip(envs, observations, reset_B)]
        cache, out = agent.act(cache, agent.observe(observations), reset_B, act_key)
        ids.append(np.asarray(out.action_ids_BxA))
        for env, action in zip(envs, agent.decode_actions(out.action_ids_BxA)):
            env.step(int(action["move"]))
    ids_NxBxA = np.stack(ids)
    tokens = agent.actions
    assert ((ids_NxBxA >= tokens.lo_A) & (ids_NxBxA < tokens.hi_A)).all()
    assert len(np.unique(ids_NxBxA[..., 0])) == 3  # All three moves sampled at a high temperature.


def _likeliest_bin(in_range_BxK: np.ndarray, values_K: np.ndarray) -> np.ndarray:
    return in_range_BxK.argmax(-1)


def _bin_nearest_the_mean(in_range_BxK: np.ndarray, values_K: np.ndarray) -> np.ndarray:
    probs = np.exp(in_range_BxK - in_range_BxK.max(-1, keepdims=True))
    mean_B = (probs / probs.sum(-1, keepdims=True)) @ values_K
    return np.abs(values_K[None] - mean_B[:, None]).argmin(-1)


@pytest.mark.parametrize("continuous_mean, expected_bin", [(False, _likeliest_bin), (True, _bin_nearest_the_mean)])
def test_greedy_continuous_actions_take_their_likeliest_or_mean_bin_while_discrete_ones_are_sampled(
        loaded, continuous_mean, expected_bin):
    agent = Agent(loaded.model, SPEC, LAYOUT, batch_size=B, cache_size=SEQ_LEN, temperature=3.0,
                  continuous_temperature=0.0, continuous_mean=continuous_mean)
    tokens = agent.actions
    continuous = tokens.modality_A == Modality.CONTINUOUS
    assert continuous.sum() == 2 and list(agent.temperature_A) == [3.0 if not c else 0.0 for c in continuous]
    assert list(agent.mean_A) == [continuous_mean and c for c in continuous]
    env = Corridor()
    state, observation = agent.initial_state(), env.reset(seed=0)[0]
    key, moves = jax.random.key(1), []
    for _ in range(12):
        key, act_key = jax.random.split(key)
        state, out = agent.act(state, agent.observe([observation] * B), np.zeros(B, bool), act_key)
        ids, logits = np.asarray(out.action_ids_BxA), np.asarray(out.logits_BxAxV, np.float64)
        for a in np.flatnonzero(continuous):
            in_range = logits[:, a, tokens.lo_A[a]:tokens.hi_A[a]]
            expected = tokens.lo_A[a] + expected_bin(in_range, tokens.bin_values_AxK[a].astype(np.float64))
            np.testing.assert_array_equal(ids[:, a], expected)
        moves.append(ids[:, 0])
    assert len(np.unique(moves)) > 1, "the discrete move is still sampled at temperature 3"


def test_the_mean_bin_lies_between_two_peaks_where_the_likeliest_bin_is_one_of_them():
    """Two near-equal peaks 12 bins apart: argmax takes the taller, the mean bin lies strictly between them."""
    lo, hi = LAYOUT.continuous_range
    values_K = jnp.asarray(agent_lib.action_tokens(SPEC, LAYOUT).bin_values_AxK[1])
    peak_a, peak_b = 8, 20  # Of 32 bins.
    logits_V = jnp.full((LAYOUT.padded_size,), -30.0).at[lo + peak_a].set(0.0).at[lo + peak_b].set(0.2)
    logits_BxV = logits_V[None]
    mean_id = int(agent_lib.mean_bin(logits_BxV, jnp.int32(lo), values_K)[0])
    greedy_id = int(agent_lib.sample_in_range(jax.random.key(0), logits_BxV, lo, hi, jnp.float32(0.0))[0])
    assert greedy_id == lo + peak_b
    assert lo + peak_a < mean_id < lo + peak_b


@functools.partial(jax.jit, static_argnums=0)
def forward(graphdef, params, seq: TokenSequence, mask=None, distance=None) -> jax.Array:
    """The full forward pass, compiled once per shape for every test that uses it."""
    return nnx.merge(graphdef, params)(seq, mask=mask, distance=distance)


def _action_history(ids_BxA: np.ndarray, modality_A: np.ndarray, patch_dim: int) -> TokenSequence:
    """The sampled action tokens as `tokenize_episode` lays them out."""
    rows = []
    for ids_A in ids_BxA:
        seq = seq_lib.empty(len(ids_A), int(np.sqrt(patch_dim // 3)))
        rows.append(seq._replace(tokens=ids_A.astype(np.int32), modality=modality_A.astype(np.int32),
                                 local_pos=np.full(len(ids_A), seq_lib.ACTION_LOCAL_POS, np.int32),
                                 segment_ids=np.ones(len(ids_A), np.int32)))
    return seq_lib.stack(rows)


def _visible_mask(writes: int, prompt: int, ring: int, episode_start_BxW: np.ndarray) -> np.ndarray:
    """bool [B, W, W]: what the ring cache shows token q: causal, the pinned prompt, and the tokens of
    q's own episode still inside the ring window."""
    q, k = np.arange(writes)[:, None], np.arange(writes)[None, :]
    causal = k <= q
    in_ring = (q - k < ring) & (k >= episode_start_BxW[:, :, None])
    return causal[None] & ((k < prompt)[None] | in_ring)


@pytest.mark.parametrize("prompted", [True, False])
def test_cached_action_logits_equal_full_forward(loaded, prompted):
    """Acting over the ring cache (with wraps and a reset per row) sees exactly what a full forward pass
    over the same token history sees under the equivalent attention mask and ALiBi distances."""
    agent = Agent(loaded.model, SPEC, LAYOUT, batch_size=B, cache_size=SEQ_LEN)
    prompt = _prompt(agent) if prompted else None
    cache = agent.initial_state(prompt)
    p = 0 if prompt is None else prompt.length
    history, starts, logits, action_writes = ([] if prompt is None else [prompt]), [], [], []
    start_B, written = np.zeros(B, int), p
    envs = [Corridor() for _ in range(B)]
    observations = [env.reset(seed=i)[0] for i, env in enumerate(envs)]
    key = jax.random.key(1)
    for step in range(14 if prompted else 18):  # The same history length (and compile) either way.
        reset_B = np.array([step == 5, step == 9])
        start_B = np.where(reset_B, written, start_B)
        obs = agent.observe(observations)
        key, act_key = jax.random.split(key)
        cache, out = agent.act(cache, obs, reset_B, act_key)
        a = out.action_ids_BxA.shape[1]
        chunk_len = obs.length + a
        history += [obs, _action_history(np.asarray(out.action_ids_BxA), agent.actions.modality_A, obs.patch_dim)]
        starts.append(np.repeat(start_B[:, None], chunk_len, 1))
        logits.append(np.asarray(out.logits_BxAxV))
        action_writes.append(written + obs.length - 1 + np.arange(a))  # Positions predicting each action token.
        written += chunk_len
        observations = [env.reset(seed=step)[0] if reset_B[i] else env.step(int(act["move"]))[0]
                        for i, (env, act) in enumerate(zip(envs, agent.decode_actions(out.action_ids_BxA)))]
    seq = TokenSequence(*(np.concatenate(fields, axis=1) for fields in zip(*history)))
    start_BxW = np.concatenate([np.zeros((B, p), int)] + starts, axis=1)
    mask = _visible_mask(written, p, SEQ_LEN - p, start_BxW)
    distance = cache_lib.pinned_prefix_distance(mask, p)  # ALiBi: the prompt sits right before the episode.
    graphdef, params = nnx.split(loaded.model)
    full_BxTxV = np.asarray(forward(graphdef, params, seq, mask, distance))
    expected = full_BxTxV[:, np.concatenate(action_writes)]
    got = np.concatenate(logits, axis=1)
    assert written - p > 1.5 * (SEQ_LEN - p)  # The ring wrapped.
    np.testing.assert_allclose(got, expected, atol=2e-4 * np.abs(expected).max())


def test_run_episodes_counts_seeded_episodes(loaded):
    agent = Agent(loaded.model, SPEC, LAYOUT, batch_size=B, cache_size=SEQ_LEN, temperature=0.0)
    make = lambda seed: Corridor(max_steps=9)
    results = []
    for _ in range(2):
        envs = EnvBatch(make, lambda a: int(a["move"]), SPEC, num_envs=B, num_episodes=3, max_steps=6, seed=4,
                        record_first=True)
        results.append(run_episodes(agent, envs, jax.random.key(0), progress=False))
    result = results[0]
    assert [e.index for e in result.episodes] == [0, 1, 2]
    assert all(1 <= e.length <= 6 for e in result.episodes)
    assert len(result.frames) == result.episodes[0].length + 1 and result.frames[0].shape == (160, 160, 3)
    assert [e.ret for e in results[1].episodes] == [e.ret for e in result.episodes]  # Greedy and seeded.


def test_rollout_frames_carry_the_history_training_windows_show(loaded):
    """With `frame_history` the agent's chunk at every step of a rollout holds the frames a training window
    of the same episode holds there (`with_frame_history`), episodes restarting their history at reset."""
    spec = dataclasses.replace(SPEC, frame_history=3)
    agent = Agent(loaded.model, spec, LAYOUT, batch_size=B, cache_size=SEQ_LEN, temperature=1.0)
    seen = []  # (frames of every row, reset flags, the image patches of the chunk) per act step.
    observe = agent.observe

    def spy(observations, reset_B):
        chunk = observe(observations, reset_B)
        seen.append(([o["frame"] for o in observations], np.asarray(reset_B), chunk.patches[:, chunk.modality[0] == 2]))
        return chunk

    agent.observe = spy
    envs = EnvBatch(lambda seed: Corridor(max_steps=9), lambda a: int(a["move"]), spec, num_envs=B, num_episodes=4,
                    max_steps=5, seed=4)
    run_episodes(agent, envs, jax.random.key(1), progress=False)
    for row in range(B):
        starts = [i for i, (_, reset, _) in enumerate(seen) if reset[row]] + [len(seen)]
        assert len(starts) >= 3  # At least two episodes in this row.
        for lo, hi in zip(starts, starts[1:]):
            frames = np.stack([seen[i][0][row] for i in range(lo, hi)])
            steps = {"observation": {"frame": frames}, "action": {}}
            expected = episode_lib.with_frame_history(spec, steps)["observation"]["frame"]
            for i in range(lo, hi):
                np.testing.assert_array_equal(seen[i][2][row], images_lib.patchify(expected[i - lo][None], 16)[0])


# ---------------------------------------------------------------------------------------------------------
# Scores and the evaluation report.


def test_normalized_scores():
    assert report.normalized_score(5.0, 1.0, 9.0) == 0.5
    assert math.isnan(report.normalized_score(1.0, 2.0, 2.0))
    refs = report.References(random=-20.7, expert=21.0, random_std=0.5, expert_std=2.0, random_episodes=30,
                             expert_episodes=30)
    entry = report.task_scores([-20.7, 21.0], refs, prompted=False)
    assert entry["return_mean"] == pytest.approx(0.15) and entry["return_std"] == pytest.approx(20.85)
    assert entry["normalized"] == pytest.approx(0.5)
    assert (entry["expert_episodes"], entry["random_episodes"], entry["expert_std"]) == (30, 30, 2.0)
    assert not any("human" in k for k in entry)  # Full-game human scores do not compare with capped episodes.
    tasks = {"a": {"normalized": 0.4}, "b": {"normalized": 0.9}, "c": {"normalized": 1.2}}
    s = report.summary(tasks)
    assert (s["tasks_at_50pct"], s["tasks_at_80pct"], s["tasks_at_100pct"]) == (2, 2, 1)
    assert s["mean_normalized"] == pytest.approx(2.5 / 3)


def test_references_read_dataset_metadata():
    meta = {"expert_return": 20.0, "random_return": -21.0, "expert_returns": [19.0, 21.0],
            "random_returns": [-21.0, -20.0, -22.0], "reference_scores": {"random": -20.7, "human": 14.6}}
    refs = eval_lib.references("atari_pong", meta)
    assert refs == report.References(-21.0, 20.0, random_std=pytest.approx(np.std([-21.0, -20.0, -22.0])),
                                     expert_std=1.0, random_episodes=3, expert_episodes=2)
    older = eval_lib.references("x", {"expert_return": 1.0, "random_return": 0.0, "expert_return_std": 0.5})
    assert (older.expert_episodes, older.expert_std, older.random_std) == (None, 0.5, None)
    with pytest.raises(ValueError, match="make data"):
        eval_lib.references("x", {"expert_return": 1.0})


def test_heldout_episodes_come_from_the_test_split_only(tmp_path):
    """No test episodes: a one-line error naming `make data`, never a fall-back to training episodes."""
    asked = []

    def load(name, split):
        asked.append(split)
        return [corridor_episode(0, 7)] if split == "train" else []

    hooks = TASK_HOOKS._replace(load_episodes=load)
    assert len(eval_lib.heldout_episodes(TASK_HOOKS, TASK)) == 2
    with pytest.raises(eval_lib.MissingDataError, match=r"no held-out \('test' split\) episodes.*make data EXP="):
        eval_lib.heldout_episodes(hooks, TASK)
    with pytest.raises(eval_lib.MissingDataError, match="make data EXP="):
        eval_lib.evaluate_checkpoint(load_checkpoint(tiny_checkpoint()[0]), tiny_config(), str(tmp_path / "eval"),
                                     SOURCES, hooks, DATA_HOOKS, progress=False)
    assert "train" not in asked and not (tmp_path / "eval" / "report.json").exists()


def test_caption_examples_are_shared_between_kinds_and_scored_apart():
    examples = ([{"source": "scene", "novel": False, "i": i} for i in range(10)]
                + [{"source": "digit", "novel": False, "i": 10 + i} for i in range(10)]
                + [{"source": "scene", "novel": True, "i": 20 + i} for i in range(2)])
    picked = eval_lib.select_caption_examples(examples, 9)
    kinds = [eval_lib.caption_kind(e) for e in picked]
    assert (kinds.count("seen_pairs"), kinds.count("digits"), kinds.count("novel_pairs")) == (4, 3, 2)
    assert [e["i"] for e in picked] == [0, 1, 2, 3, 10, 11, 12, 20, 21]  # Stored order within each kind.
    correct = np.array([True, False, True, True, False, False])
    kinds = np.array(["seen_pairs", "seen_pairs", "digits", "digits", "novel_pairs", "digits"])
    scores = eval_lib._caption_scores(correct, kinds, {"count": []})
    assert scores["accuracy_seen_pairs"] == 0.5 and scores["accuracy_novel_pairs"] == 0.0
    assert scores["accuracy_digits"] == pytest.approx(2 / 3) and scores["examples_digits"] == 3
    assert scores["accuracy_all"] == 0.5


def test_continuous_action_errors_are_in_action_units():
    """push is uniform over [-1, 1] in 32 bins, scaled by 2: bin b decodes to 2 * (-1 + (b + 0.5) / 16)."""
    lo = LAYOUT.continuous_range[0]
    bins = lambda *b: lo + np.asarray(b)
    value = lambda b: 2.0 * (-1.0 + (b + 0.5) / 16)
    target = np.stack([np.full(2, LAYOUT.discrete_offset), bins(0, 31), bins(16, 16)], axis=1)  # [N=2, A=3]
    predicted = np.stack([np.full(2, LAYOUT.discrete_offset), bins(1, 31), bins(16, 15)], axis=1)
    got = eval_lib.continuous_action_errors(SPEC, LAYOUT, target, predicted)
    step = value(1) - value(0)
    assert got["heldout_action_mae"] == pytest.approx(2 * step / 4)  # Two of four values off by one bin.
    truth = np.array([[value(0), value(16)], [value(31), value(16)]])
    assert got["heldout_mean_action_mae"] == pytest.approx(np.abs(truth - truth.mean(0)).mean())
    assert got["heldout_continuous_actions"] == 4
    discrete = TaskSpec(name="d", observation=SPEC.observation, action=SPEC.action[:1])
    assert eval_lib.continuous_action_errors(discrete, LAYOUT, target[:, :1], predicted[:, :1]) == {}


def test_a_subset_of_the_tasks_draws_the_sampling_keys_of_the_full_evaluation(monkeypatch):
    """`make eval --tasks=b` scores b with the key b has when a, b and c are evaluated together."""
    keys = {}
    monkeypatch.setattr(eval_lib, "heldout_episodes", lambda hooks, name: [])
    monkeypatch.setattr(eval_lib, "evaluate_task", lambda loaded, name, settings, hooks, key, *a, **k: keys.setdefault(
        name, []).append(np.asarray(jax.random.key_data(key))) or {})
    settings = eval_lib.EvalSettings(2, 2, 10, 0.0, False, 1.0, 7, 0.0)
    eval_lib._control(None, ["a", "b", "c"], settings, TASK_HOOKS, "", progress=False)
    eval_lib._control(None, ["b"], settings, TASK_HOOKS, "", progress=False, key_order=["a", "b", "c"])
    eval_lib._control(None, ["b"], settings, TASK_HOOKS, "", progress=False)
    full, subset, alone = keys["b"]
    np.testing.assert_array_equal(subset, full)
    assert not np.array_equal(alone, full)  # Without the order, b would take a's key.


def test_evaluate_writes_report_chart_and_video(loaded, tmp_path, monkeypatch):
    monkeypatch.setattr(eval_lib, "CAPTION_BATCH", 1)  # Shares the sampler's compiles with sample_test.
    out = str(tmp_path / "eval")
    shadowed = []  # Whether the model agreed, for every step the shadow saw.

    class MovesRight(gymnasium.Wrapper):
        """A shadowing 'expert' that always wants move 2 (walk right)."""

        def __init__(self, env, record):
            super().__init__(env)
            self.record = record

        def step(self, action):
            self.record(action == 2)
            return self.env.step(action)

    shadow = lambda name, env, tally: MovesRight(env, lambda agrees: (shadowed.append(agrees), tally(agrees)))
    hooks = TASK_HOOKS._replace(shadow_expert=shadow)
    result = eval_lib.evaluate_checkpoint(loaded, tiny_config(), out, SOURCES, hooks, DATA_HOOKS, progress=False)
    with open(os.path.join(out, "report.json")) as f:
        saved = json.load(f)
    task = saved["tasks"][TASK]
    assert task["onpolicy_steps"] == len(shadowed) == round(task["length_mean"] * task["episodes"]) > 0
    assert task["onpolicy_expert_agreement"] == pytest.approx(np.mean(shadowed))
    for key in ("episodes", "return_mean", "return_std", "random", "expert", "normalized", "prompted", "video"):
        assert key in task
    assert task["episodes"] == 3 and task["prompted"] is True and (task["random"], task["expert"]) == (-2.0, 0.5)
    assert task["normalized"] == pytest.approx((task["return_mean"] + 2.0) / 2.5)
    assert os.path.getsize(os.path.join(out, task["video"])) > 0
    c = saved["captions"]
    assert c["examples"] == 3
    assert (c["examples_seen_pairs"], c["examples_novel_pairs"], c["examples_digits"]) == (1, 1, 1)
    assert all(0 <= c[f"accuracy_{k}"] <= 1 for k in ("seen_pairs", "novel_pairs", "digits"))
    assert task["heldout_source"] == "test" and (task["expert_episodes"], task["random_episodes"]) == (2, 3)
    assert task["expert_std"] == 0.5 and task["random_std"] == pytest.approx(np.std([-3.0, -2.0, -1.0]))
    assert task["heldout_action_mae"] >= 0 and task["heldout_mean_action_mae"] >= 0
    assert task["heldout_action_mae_mean_bin"] >= 0
    assert not any("human" in k for k in task)
    assert saved["text"]["perplexity"] > 1 and saved["text"]["unigram_perplexity"] == 50.0
    assert os.path.getsize(os.path.join(out, "normalized_scores.png")) > 0
    with open(os.path.join(out, "report.md")) as f:
        md = f.read()
    assert f"| {TASK} | 3 |" in md and "Captions" in md and "Text" in md and "held-out action acc." in md
    assert "human" not in md and "digits" in md and "novel pairs" in md and "action MAE" in md
    assert "| 0.50 ± 0.50 (2) |" in md  # The expert reference: mean ± std (episodes).
    assert 0 <= task["heldout_action_accuracy"] <= 1 and task["heldout_action_targets"] > 0
    assert result["tasks"][TASK]["episodes"] == 3


def test_heldout_action_accuracy_matches_the_training_metric(loaded):
    """The report's imitation figure is the loss function's action accuracy on the same held-out windows."""
    from gato_jax.train.loss import next_token_loss, reduce_metrics

    episodes = TASK_HOOKS.load_episodes(TASK, "test")
    got = eval_lib.heldout_action_accuracy(loaded, TASK, episodes, sources.control_windows, windows=5)
    flat = sources.FlatEpisodes.from_episodes(episodes, SPEC)
    source = sources.ControlSource(SPEC, LAYOUT, flat, SEQ_LEN, prompt_prob=0.0, prompt_end_fraction=0.0)
    rng = np.random.default_rng(0)
    batch = jax.tree.map(jnp.asarray, seq_lib.stack([source(rng) for _ in range(5)]))
    _, metrics = next_token_loss(loaded.model(batch), batch)
    expected = reduce_metrics(jax.device_get(metrics))
    targets = np.asarray(batch.tokens[:, 1:])[np.asarray(batch.loss_mask[:, 1:])]
    assert got["heldout_action_targets"] == targets.size > 0
    assert got["heldout_action_accuracy"] == pytest.approx(expected["accuracy_action"], abs=1e-6)
    assert got["heldout_majority_accuracy"] == pytest.approx(np.bincount(targets).max() / targets.size)
    rows = [np.asarray(t)[np.asarray(m)] for t, m in zip(batch.tokens[:, 1:], batch.loss_mask[:, 1:])]
    step = SPEC.action_tokens  # 3: move, then two push values.
    repeats = np.concatenate([r[step:] == r[:-step] for r in rows])
    assert got["heldout_repeat_accuracy"] == pytest.approx(repeats.mean())
    # The bin nearest the mean, from these logits by hand: `push` is linear (not mu-law), scale 2.
    lo, hi = LAYOUT.continuous_range
    logits = np.asarray(loaded.model(batch), np.float64)[:, :-1, lo:hi]
    is_push = np.asarray(batch.loss_mask[:, 1:]) & (np.asarray(batch.modality[:, 1:]) == Modality.CONTINUOUS)
    values_K = agent_lib.action_tokens(SPEC, LAYOUT).bin_values_AxK[1].astype(np.float64)
    probs = np.exp(logits[is_push] - logits[is_push].max(-1, keepdims=True))
    mean = (probs / probs.sum(-1, keepdims=True)) @ values_K
    nearest = values_K[np.abs(values_K[None] - mean[:, None]).argmin(-1)]
    truth = values_K[np.asarray(batch.tokens[:, 1:])[is_push] - lo]
    assert got["heldout_action_mae_mean_bin"] == pytest.approx(2.0 * np.abs(nearest - truth).mean(), rel=1e-5)


def test_measure_acting_counts_the_tokens_it_decodes(loaded, monkeypatch):
    """Tokens/s is tokens decoded over seconds: with a clock that advances one second per reading, the rate
    is the count of (observation + action) tokens of every row over the timed steps."""
    ticks = iter(range(10_000))
    monkeypatch.setattr(acting_speed, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    speed = acting_speed.measure_acting(loaded, TASK, TASK_HOOKS, num_envs=B, steps=3)
    per_step = B * (SPEC.tokens_per_timestep)
    assert speed.tokens_per_s == pytest.approx(3 * per_step) and speed.agent_env_steps_per_s == pytest.approx(3 * B)
    assert speed.num_envs == B and speed.compile_s == 1.0


def test_matched_error_reference_plays_the_expert_at_the_models_error_rate():
    calls = []

    def expert_with_errors(name, rate, **settings):
        calls.append((name, rate, settings))
        return [1.0, 3.0]

    hooks = TASK_HOOKS._replace(expert_with_errors=expert_with_errors)
    refs = report.References(random=0.0, expert=4.0)
    settings = eval_lib.EvalSettings(50, 25, 1000, 0.25, True, 1.0, 7, 0.0, matched_error_episodes=2)
    pong = TaskSpec("atari_pong", (FieldSpec("frame", FieldKind.IMAGE, (16, 16, 1)),),
                    (FieldSpec("action", FieldKind.DISCRETE, (), num_values=6),), patch_size=16)
    out = eval_lib.matched_error_reference(pong, {"heldout_action_accuracy": 0.75}, refs, settings, hooks)
    assert out == {"matched_error_expert": {"error_rate": 0.25, "episodes": 2, "return_mean": 2.0,
                                            "return_std": 1.0, "normalized": 0.5}}
    assert calls == [("atari_pong", 0.25, {"episodes": 2, "sticky_actions": 0.25, "max_steps": 1000, "seed": 7})]
    row = report.markdown({"tasks": {"atari_pong": {**report.task_scores([1.0], refs, prompted=True), **out}}})
    assert "expert erring as often" in row and "| 0.50 (0.25, 2) |" in row
    # Continuous actions (no error rate), no episodes asked for, or no hook: nothing.
    assert eval_lib.matched_error_reference(SPEC, {"heldout_action_accuracy": 0.75}, refs, settings, hooks) == {}
    assert eval_lib.matched_error_reference(pong, {"heldout_action_accuracy": 0.75}, refs,
                                            settings._replace(matched_error_episodes=0), hooks) == {}
    assert eval_lib.matched_error_reference(pong, {"heldout_action_accuracy": 0.75}, refs, settings, TASK_HOOKS) == {}


def test_the_report_prints_normalised_scores_to_three_places():
    """A score just under a 50% bar must not read as 0.50 in the table (the summary counts it under)."""
    scores = report.task_scores([1.992], report.References(random=0.0, expert=4.0), prompted=True)
    table = report.markdown({"tasks": {"atari_boxing": scores}})
    assert "| 0.498 |" in table and "| 0.50 |" not in table


def test_heldout_curve_measures_every_checkpoint_on_the_same_windows(tmp_path):
    _, state, tokenizer = tiny_checkpoint()
    workdir = str(tmp_path / "run")
    for step in (1, 3):  # Two checkpoints of different weights: each row must be its own checkpoint's accuracy.
        shifted = state if step == 1 else state._replace(params=jax.tree.map(lambda p: p * 1.5, state.params))
        save_checkpoint(workdir, tiny_config(), shifted, tokenizer, step=step)
    assert checkpoint_steps(workdir) == [1, 3]
    rows = eval_lib.heldout_curve(lambda s: load_checkpoint(workdir, s), checkpoint_steps(workdir), [TASK], TASK_HOOKS)
    assert [r["step"] for r in rows] == [1, 3]
    for row in rows:
        direct = eval_lib.heldout_action_accuracy(load_checkpoint(workdir, row["step"]), TASK,
                                                  TASK_HOOKS.load_episodes(TASK, "test"), TASK_HOOKS.windows)
        assert row[TASK] == direct
    report.write_curve_chart(str(tmp_path / "curve.png"), rows)
    assert (tmp_path / "curve.png").stat().st_size > 0
    table = report.curve_markdown(rows)
    assert f"| 3 | {rows[1][TASK]['heldout_action_accuracy']:.3f} |" in table and "repeat-last" in table
