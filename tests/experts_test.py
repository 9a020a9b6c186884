"""Tasks, envs and scripted experts: specs match what envs emit, and experts beat random play."""
import numpy as np
import pytest

from data_pipelines import experts, tasks
from gato_jax.tokenizers.spec import FieldKind


def _play(name: str, kind: str, *, max_steps: int, sticky: float = tasks.EVAL_STICKY_ACTIONS,
          seed: int = 0) -> float:
    env = tasks.make_env(name, sticky_actions=sticky, max_steps=max_steps, seed=seed)
    policy = experts.make_policy(name, kind)
    observation, _ = env.reset()
    policy.reset(env, np.random.default_rng(seed))
    total, done = 0.0, False
    while not done:
        observation, reward, terminated, truncated, _ = env.step(
            tasks.action_to_env(name, policy.act(env, observation)))
        total, done = total + reward, terminated or truncated
    env.close()
    return total


@pytest.mark.parametrize("name", tasks.task_names())
def test_env_emits_the_spec_format(name):
    spec = tasks.task_spec(name, frame_size=80, patch_size=16)
    env = tasks.make_env(name, sticky_actions=0.0, max_steps=10, seed=0)
    observation, _ = env.reset()
    for field in spec.observation:
        value = observation[field.name]
        assert value.shape == field.shape
        assert value.dtype == (np.uint8 if field.kind == FieldKind.IMAGE else np.float32)
    (action_field,) = spec.action
    action = experts.RandomPolicy()
    action.reset(env, np.random.default_rng(0))
    env.step(tasks.action_to_env(name, action.act(env, observation)))
    if action_field.kind == FieldKind.DISCRETE:
        assert action_field.num_values == env.action_space.n == len(tasks.get_task(name).action_meanings)
    else:
        assert action_field.shape == env.action_space.shape
        assert action_field.scale == pytest.approx(float(env.action_space.high[0]))
        assert not action_field.companded
    env.close()


def test_spec_follows_frame_and_patch_size():
    spec = tasks.task_spec("atari_pong", frame_size=64, patch_size=16)
    assert spec.observation[0].shape == (64, 64, 1)
    assert spec.observation_tokens == 16 and spec.action_tokens == 1
    with pytest.raises(ValueError, match="multiples of patch_size"):
        tasks.task_spec("atari_pong", frame_size=72)
    with pytest.raises(ValueError, match="Unknown control task"):
        tasks.task_spec("atari_nope")


def test_vector_env_batches_single_envs():
    envs = tasks.make_vector_env("atari_pong", 2, max_steps=5, seed=3)
    observation, _ = envs.reset()
    assert observation["frame"].shape == (2, 80, 80, 1) and observation["frame"].dtype == np.uint8
    single, _ = tasks.make_env("atari_pong", max_steps=5, seed=3).reset()
    np.testing.assert_array_equal(observation["frame"][0], single["frame"])  # Same frames as recording.
    observation, *_ = envs.step(tasks.vector_action_to_env("atari_pong", {"action": np.array([0, 2])}))
    assert observation["frame"].shape == (2, 80, 80, 1)
    envs.close()


def test_action_to_env_checks_and_clips():
    assert tasks.action_to_env("atari_freeway", {"action": np.int32(2)}) == 2
    with pytest.raises(ValueError, match="outside"):
        tasks.action_to_env("atari_freeway", {"action": np.int32(3)})
    clipped = tasks.action_to_env("control_pendulum", {"action": np.array([7.0], np.float32)})
    np.testing.assert_allclose(clipped, [3.0])


def test_reference_scores_are_data():
    assert tasks.reference_scores("atari_pong") == {"random": -20.7, "human": 14.6}
    assert tasks.reference_scores("control_reacher") == {}


def test_freeway_expert_beats_random():
    assert _play("atari_freeway", "expert", max_steps=200) >= 2 > _play("atari_freeway", "random", max_steps=200)


def test_breakout_expert_beats_random():
    # Seeded, so deterministic; a short cap keeps it fast (the expert's lead grows with the cap).
    assert _play("atari_breakout", "expert", max_steps=250) > _play("atari_breakout", "random", max_steps=250)


def test_control_experts_beat_random():
    assert _play("control_pendulum", "expert", max_steps=200) == 200  # Balanced the whole time.
    assert _play("control_pendulum", "random", max_steps=200) < 50
    for seed in range(2):
        assert _play("control_reacher", "expert", max_steps=50, seed=seed) > \
            _play("control_reacher", "random", max_steps=50, seed=seed) + 20


def test_epsilon_policy_mixes_in_random_actions():
    env = tasks.make_env("atari_freeway", sticky_actions=0.0, max_steps=50, seed=0)
    observation, _ = env.reset()
    policy = experts.make_policy("atari_freeway", epsilon=0.5)
    policy.reset(env, np.random.default_rng(0))
    actions = {int(policy.act(env, observation)["action"]) for _ in range(50)}
    assert actions == {0, 1, 2} and policy.name == "freeway_up+eps0.5"
    with pytest.raises(ValueError, match="Unknown policy kind"):
        experts.make_policy("atari_freeway", "oracle")


@pytest.mark.slow
def test_pong_lookahead_expert_wins_points():
    """A full recording-length stretch without sticky actions: the planner wins most points."""
    assert _play("atari_pong", "expert", max_steps=1000, sticky=0.0) >= 5


@pytest.mark.slow
def test_boxing_lookahead_expert_outscores_human_reference():
    assert _play("atari_boxing", "expert", max_steps=600) > tasks.reference_scores("atari_boxing")["human"]
