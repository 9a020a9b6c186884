"""Tests for control-episode tokenization (docs/TOKEN_FORMAT.md, "Timesteps and episodes")."""
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gato_jax.tokenizers import episode, images, values
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.sequence import ACTION_LOCAL_POS, NO_LOCAL_POS, Modality
from gato_jax.tokenizers.spec import FieldKind, FieldSpec, TaskSpec
from gato_jax.tokenizers.vocab import VocabLayout

LAYOUT = VocabLayout()
D, C = LAYOUT.discrete_offset, LAYOUT.continuous_offset
IMG, SEP = LAYOUT.special_id("<image>"), LAYOUT.separator_id

# Mixed task: a 32x32 grayscale frame (4 patches), discrete (2,), continuous (3,) observations;
# a discrete and an uncompanded, scaled continuous (2,) action. 9 + 1 + 3 = 13 tokens per timestep.
MIXED = TaskSpec(
    name="test/mixed",
    observation=(
        FieldSpec("b_state", FieldKind.CONTINUOUS, (3,)),
        FieldSpec("a_count", FieldKind.DISCRETE, (2,), num_values=10),
        FieldSpec("z_frame", FieldKind.IMAGE, (32, 32, 1)),
    ),
    action=(
        FieldSpec("torque", FieldKind.CONTINUOUS, (2,), companded=False, scale=2.0),
        FieldSpec("move", FieldKind.DISCRETE, (), num_values=5),
    ),
)


def _mixed_steps(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observation": {
            "z_frame": rng.integers(0, 256, (n, 32, 32, 1), dtype=np.uint8),
            "a_count": rng.integers(0, 10, (n, 2)),
            "b_state": rng.normal(0, 5, (n, 3)),
            "unused_extra": np.zeros(n),
        },
        "action": {"torque": rng.uniform(-2, 2, (n, 2)), "move": rng.integers(0, 5, (n,))},
    }


def _step(steps: dict, i: int) -> tuple[dict, dict]:
    return ({k: v[i] for k, v in steps["observation"].items()}, {k: v[i] for k, v in steps["action"].items()})


def test_field_order_by_kind_then_name():
    spec = TaskSpec(
        name="order",
        observation=(
            FieldSpec("b", FieldKind.CONTINUOUS),
            FieldSpec("a", FieldKind.DISCRETE, num_values=4),
            FieldSpec("c", FieldKind.DISCRETE, num_values=4),
            FieldSpec("z", FieldKind.IMAGE, (16, 16, 3)),
            FieldSpec("zz", FieldKind.TEXT, (2,)),
        ),
        action=(FieldSpec("b", FieldKind.CONTINUOUS, companded=False),
                FieldSpec("a", FieldKind.DISCRETE, num_values=3)),
    )
    obs = {"b": 1.0, "a": 3, "c": 1, "z": np.zeros((16, 16, 3), np.uint8), "zz": np.array([7, 8])}
    seq = episode.tokenize_timestep(spec, LAYOUT, obs, {"b": -1.0, "a": 2})
    b_id = values.tokenize_continuous(1.0, LAYOUT)[0]
    assert list(seq.tokens) == [7, 8, IMG, D + 3, D + 1, b_id, SEP, D + 2, C]
    assert list(seq.modality) == [Modality.TEXT] * 2 + [Modality.IMAGE, Modality.DISCRETE, Modality.DISCRETE,
                                                         Modality.CONTINUOUS, Modality.SEPARATOR,
                                                         Modality.DISCRETE, Modality.CONTINUOUS]
    assert len(seq.tokens) == spec.tokens_per_timestep


def test_mixed_timestep_layout():
    steps = _mixed_steps(1)
    obs, act = _step(steps, 0)
    seq = episode.tokenize_timestep(MIXED, LAYOUT, obs, act)
    assert seq.length == MIXED.tokens_per_timestep == 13
    expected = np.concatenate([
        [IMG] * 4, D + obs["a_count"], values.tokenize_continuous(obs["b_state"], LAYOUT), [SEP],
        [D + act["move"]], values.tokenize_continuous(act["torque"] / 2.0, LAYOUT, companded=False)])
    np.testing.assert_array_equal(seq.tokens, expected)
    assert seq.tokens.dtype == np.int32
    assert list(seq.modality) == ([Modality.IMAGE] * 4 + [Modality.DISCRETE] * 2 + [Modality.CONTINUOUS] * 3
                                  + [Modality.SEPARATOR, Modality.DISCRETE] + [Modality.CONTINUOUS] * 2)
    assert list(seq.local_pos) == [*range(9), NO_LOCAL_POS] + [ACTION_LOCAL_POS] * 3
    assert list(seq.loss_mask) == [False] * 10 + [True] * 3
    assert np.all(seq.segment_ids == 1)
    np.testing.assert_array_equal(seq.patches[:4], images.image_to_patch_pixels(obs["z_frame"], 16))
    np.testing.assert_array_equal(seq.patch_pos[:4], images.patch_intervals(32, 32, 16))
    assert not seq.patches[4:].any() and not seq.patch_pos[4:].any()
    assert seq.patches.shape == (13, 768) and seq.patches.dtype == np.uint8


def test_observation_tokens_is_the_timestep_prefix():
    obs, act = _step(_mixed_steps(1), 0)
    prompt = episode.observation_tokens(MIXED, LAYOUT, obs)
    full = episode.tokenize_timestep(MIXED, LAYOUT, obs, act)
    assert prompt.length == 10 and prompt.tokens[-1] == SEP
    for got, want in zip(prompt, seq_lib.slice_tokens(full, 0, 10)):
        np.testing.assert_array_equal(got, want)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**16))
def test_episode_is_concatenated_timesteps(n, seed):
    steps = _mixed_steps(n, seed)
    seq = episode.tokenize_episode(MIXED, LAYOUT, steps)
    assert seq.length == MIXED.tokens_per_timestep * n
    want = seq_lib.concat([episode.tokenize_timestep(MIXED, LAYOUT, *_step(steps, i)) for i in range(n)])
    for got, expected in zip(seq, want):
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    assert seq.loss_mask.sum() == 3 * n


def test_long_atari_episode_is_fast():
    spec = TaskSpec("atari/test", (FieldSpec("frame", FieldKind.IMAGE, (80, 80, 1)),),
                    (FieldSpec("action", FieldKind.DISCRETE, num_values=18),))
    n = 2000
    steps = {"observation": {"frame": np.zeros((n, 80, 80, 1), np.uint8)},
             "action": {"action": np.arange(n) % 18}}
    start = time.perf_counter()
    seq = episode.tokenize_episode(spec, LAYOUT, steps)
    assert time.perf_counter() - start < 5.0  # A Python loop per token would take far longer.
    assert spec.tokens_per_timestep == 27 and seq.length == 27 * n
    np.testing.assert_array_equal(seq.tokens[26::27], D + np.arange(n) % 18)


def test_action_token_ranges():
    lo_hi = episode.action_token_ranges(MIXED, LAYOUT)
    assert lo_hi == [(D, D + 5), (C, C + 1024), (C, C + 1024)]


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 4), st.floats(-2, 2), st.floats(-2, 2))
def test_decode_action_round_trip(move, t0, t1):
    act = {"move": np.int64(move), "torque": np.array([t0, t1])}
    obs, _ = _step(_mixed_steps(1), 0)
    ids = episode.tokenize_timestep(MIXED, LAYOUT, obs, act).tokens[-3:]
    decoded = episode.decode_action(MIXED, LAYOUT, ids)
    assert decoded["move"].shape == () and int(decoded["move"]) == move
    assert decoded["torque"].shape == (2,) and decoded["torque"].dtype == np.float32
    assert np.all(np.abs(decoded["torque"] - act["torque"]) <= 2.0 / 1024 + 1e-6)  # scale * half bin.


def test_decode_companded_action():
    spec = TaskSpec("c", (), (FieldSpec("v", FieldKind.CONTINUOUS, (2, 2), companded=True, scale=3.0),))
    x = np.array([[0.5, -30.0], [100.0, 0.0]])
    seq = episode.tokenize_timestep(spec, LAYOUT, {}, {"v": x})
    assert seq.length == 5 and list(seq.local_pos) == [NO_LOCAL_POS] + [ACTION_LOCAL_POS] * 4
    decoded = episode.decode_action(spec, LAYOUT, seq.tokens[1:])["v"]
    assert decoded.shape == (2, 2)
    err = np.abs(values.mu_law_encode(decoded / 3.0) - values.mu_law_encode(x / 3.0))
    assert np.all(err <= 1.0 / 1024 + 1e-6)


def test_decode_action_errors():
    with pytest.raises(ValueError, match="3 action tokens"):
        episode.decode_action(MIXED, LAYOUT, [D])
    with pytest.raises(ValueError, match="'move'.*num_values"):
        episode.decode_action(MIXED, LAYOUT, [D + 5, C, C])
    with pytest.raises(ValueError, match="'torque'.*continuous"):
        episode.decode_action(MIXED, LAYOUT, [D, D, C])


def _with(steps: dict, part: str, name: str, value) -> dict:
    return {**steps, part: {**steps[part], name: value}}


@pytest.mark.parametrize("part,name,value,match", [
    ("action", "move", np.array([0, 5, 1]), "'move'.*num_values"),
    ("action", "move", np.array([0, -1, 1]), "'move'"),
    ("action", "torque", np.full((3, 2), np.nan), "'torque'.*finite"),
    ("observation", "b_state", np.full((3, 3), np.inf), "'b_state'.*finite"),
    ("observation", "a_count", np.full((3, 2), 0.5), "'a_count'.*whole"),
    ("observation", "z_frame", np.zeros((3, 32, 32, 1), np.float32), "'z_frame'.*uint8"),
    ("observation", "z_frame", np.zeros((3, 32, 32, 3), np.uint8), "'z_frame'.*shape"),
    ("observation", "z_frame", np.zeros((3, 32, 32), np.uint8), "'z_frame'"),
    ("observation", "b_state", np.zeros((3, 4)), "'b_state'.*shape"),
    ("observation", "b_state", np.zeros((2, 3)), "'b_state'.*shape"),  # Wrong number of steps.
])
def test_bad_episode_values_name_the_field(part, name, value, match):
    with pytest.raises(ValueError, match=match):
        episode.tokenize_episode(MIXED, LAYOUT, _with(_mixed_steps(3), part, name, value))


def test_missing_fields_and_keys_raise():
    steps = _mixed_steps(2)
    del steps["observation"]["a_count"]
    with pytest.raises(ValueError, match="'a_count' is missing"):
        episode.tokenize_episode(MIXED, LAYOUT, steps)
    with pytest.raises(ValueError, match="'action'"):
        episode.tokenize_episode(MIXED, LAYOUT, {"observation": steps["observation"]})
    obs, _ = _step(_mixed_steps(1), 0)
    with pytest.raises(ValueError, match="'move' is missing"):
        episode.tokenize_timestep(MIXED, LAYOUT, obs, {"torque": np.zeros(2)})


def test_text_observation_ids_checked():
    spec = TaskSpec("t", (FieldSpec("goal", FieldKind.TEXT, (3,)),),
                    (FieldSpec("a", FieldKind.DISCRETE, num_values=2),))
    seq = episode.tokenize_timestep(spec, LAYOUT, {"goal": np.array([1, 2, 3])}, {"a": 1})
    assert list(seq.tokens) == [1, 2, 3, SEP, D + 1]
    assert list(seq.loss_mask) == [False] * 4 + [True]  # Observation text is context, not a target.
    with pytest.raises(ValueError, match="'goal'.*text"):
        episode.tokenize_timestep(spec, LAYOUT, {"goal": np.array([1, 2, 32000])}, {"a": 1})


def test_too_many_observation_tokens_raise():
    spec = TaskSpec("big", (FieldSpec("v", FieldKind.CONTINUOUS, (600,)),),
                    (FieldSpec("a", FieldKind.DISCRETE, num_values=2),))
    with pytest.raises(ValueError, match="local positions"):
        episode.tokenize_timestep(spec, LAYOUT, {"v": np.zeros(600)}, {"a": 0})
