"""Frame history (`config.data.frame_history`): earlier frames in a patch's channels, the same in training
windows, prompts and rollouts. Pure numpy: no model is compiled here (the rollout side is in rollout_test)."""
import dataclasses

import numpy as np
import pytest

from data_pipelines import sources, stream
from gato_jax.tokenizers import episode, images
from gato_jax.tokenizers.spec import FieldKind, FieldSpec, TaskSpec
from gato_jax.tokenizers.vocab import VocabLayout

LAYOUT = VocabLayout(text_size=32, num_continuous_bins=32, num_discrete=32)
SPEC = TaskSpec(name="test/frames", observation=(FieldSpec("frame", FieldKind.IMAGE, (16, 16, 1)),),
                action=(FieldSpec("act", FieldKind.DISCRETE, (), num_values=4),), frame_history=3)


def numbered_frames(n: int, first: int = 0) -> np.ndarray:
    """Frame i is filled with the value first + i, so a channel names the frame it shows."""
    return np.broadcast_to((first + np.arange(n, dtype=np.uint8))[:, None, None, None], (n, 16, 16, 1)).copy()


def episode_steps(n: int, first: int = 0) -> dict:
    return {"observation": {"frame": numbered_frames(n, first)}, "action": {"act": np.arange(n) % 4}}


def channel_frames(patches_NxP: np.ndarray) -> list[list[int]]:
    """The frame number each channel of each patch shows (every pixel of a numbered frame is equal)."""
    return patches_NxP.reshape(len(patches_NxP), -1, 3)[:, 0, :].tolist()


def test_frame_history_golden():
    stacked = images.frame_history(numbered_frames(4), history=3)
    assert stacked.shape == (4, 16, 16, 3)
    assert stacked[:, 0, 0, :].tolist() == [[0, 0, 0], [1, 0, 0], [2, 1, 0], [3, 2, 1]]
    assert images.frame_history(numbered_frames(4), history=2)[:, 0, 0, :].tolist() == [
        [0, 0, 0], [1, 0, 0], [2, 1, 1], [3, 2, 2]]
    assert images.frame_history(numbered_frames(4), history=1)[:, 0, 0, :].tolist() == [[i] * 3 for i in range(4)]
    assert images.frame_history(numbered_frames(4), history=3, lead=2)[:, 0, 0, :].tolist() == [[2, 1, 0], [3, 2, 1]]


def test_frame_history_refuses_what_it_cannot_stack():
    with pytest.raises(ValueError, match="grayscale"):
        images.frame_history(np.zeros((2, 16, 16, 3), np.uint8), history=2)
    with pytest.raises(ValueError, match="1 to 3"):
        images.frame_history(numbered_frames(2), history=4)
    with pytest.raises(ValueError, match="frame_history"):
        dataclasses.replace(SPEC, frame_history=0)


def test_unstacked_frames_are_refused_when_the_spec_has_history():
    """A path that forgot `with_frame_history` fails on the frame's shape instead of replicating it."""
    with pytest.raises(ValueError, match=r"\(3, 16, 16, 3\)"):
        episode.tokenize_episode(SPEC, LAYOUT, episode_steps(3))


def test_a_window_reads_the_frames_before_it():
    """A window starting mid-episode shows its first frames' predecessors; one at the start repeats frame 0."""
    flat = sources.FlatEpisodes.from_episodes([{"steps": episode_steps(10, first=100)}], SPEC)
    source = sources.ControlSource(SPEC, LAYOUT, flat, 64, prompt_prob=0.0, prompt_end_fraction=0.0)
    mid = source._tokenize(flat, 0, 4, 6)
    image = mid.patches[mid.modality == 2]
    assert channel_frames(image) == [[104, 103, 102]] + [[105, 104, 103]]
    start = source._tokenize(flat, 0, 0, 2)
    assert channel_frames(start.patches[start.modality == 2]) == [[100, 100, 100], [101, 100, 100]]


def test_rollout_history_equals_the_training_windows():
    """`FrameHistory` (what `Agent.observe` stacks) fed one observation at a time, with a reset at each
    episode start, gives every step the frames `with_frame_history` gives the stored episode."""
    history = episode.FrameHistory(SPEC)
    lengths, firsts = (5, 4), (0, 50)
    for n, first in zip(lengths, firsts):
        expected = episode.with_frame_history(SPEC, episode_steps(n, first))["observation"]["frame"]
        for i in range(n):
            # Row 1 is another env, reset at every other step, which must not leak into row 0.
            obs = [{"frame": numbered_frames(1, first + i)[0]}, {"frame": numbered_frames(1, 200 + i)[0]}]
            got = history(obs, np.array([i == 0, i % 2 == 0]))
            np.testing.assert_array_equal(got[0]["frame"], expected[i])
            assert got[1]["frame"][0, 0].tolist() == ([200 + i] * 3 if i % 2 == 0 else [200 + i, 199 + i, 199 + i])


def test_a_new_batch_of_envs_starts_its_own_history():
    """The same agent acting on another number of envs (another `make eval` task batch) starts afresh."""
    history = episode.FrameHistory(SPEC)
    history([{"frame": numbered_frames(1, 5)[0]}] * 3, np.array([True] * 3))
    got = history([{"frame": numbered_frames(1, 9)[0]}] * 2, np.array([False, False]))
    assert [row["frame"][0, 0].tolist() for row in got] == [[9, 9, 9]] * 2


def test_history_is_a_reading_choice_not_a_dataset_property():
    """Datasets and caches keyed by a spec's JSON keep their keys at history 1, and a dataset recorded
    without history serves a run with it (the spec check ignores it, as it ignores the patch size)."""
    plain = dataclasses.replace(SPEC, frame_history=1)
    assert "frame_history" not in plain.to_json()
    assert TaskSpec.from_json(SPEC.to_json()) == SPEC and TaskSpec.from_json(plain.to_json()) == plain
    assert stream.spec_differences(plain, SPEC) == []


def test_an_evaluation_prompt_reads_the_frames_before_it():
    """`demonstration` (the end of a held-out episode) stacks as a training window of the same steps would."""
    from gato_jax.rollout.agent import demonstration

    two_steps = 2 * SPEC.tokens_per_timestep
    prompt = demonstration(SPEC, LAYOUT, {"steps": episode_steps(10, first=100)}, max_tokens=two_steps)
    assert channel_frames(prompt.patches[prompt.modality == 2]) == [[108, 107, 106], [109, 108, 107]]
