"""Tasks, envs and scripted experts: specs match what envs emit, and experts beat random play."""
import numpy as np
import pytest

from data_pipelines import episodes, experts, tasks
from gato_jax.tokenizers.spec import FieldKind


def _play(name: str, kind: str, *, max_steps: int, sticky: float = tasks.EVAL_STICKY_ACTIONS,
          seed: int = 0, factories: dict | None = None) -> float:
    env = tasks.make_env(name, sticky_actions=sticky, max_steps=max_steps, seed=seed)
    policy = factories[name]() if factories else experts.make_policy(name, kind)
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


def test_freeway_expert_beats_always_up():
    """The car-watching expert waits for gaps: more crossings than pressing UP throughout."""
    up = {"atari_freeway": lambda: type("Up", (), {"name": "up", "reset": lambda *a: None,
                                                 "act": lambda *a: {"action": np.int32(1)}})()}
    always_up = _play("atari_freeway", "expert", max_steps=1000, factories=up)
    assert _play("atari_freeway", "expert", max_steps=1000) >= always_up + 3


def test_breakout_expert_beats_random():
    # Seeded, so deterministic; a short cap keeps it fast (the expert's lead grows with the cap).
    assert _play("atari_breakout", "expert", max_steps=250) > _play("atari_breakout", "random", max_steps=250) + 3


def test_pong_expert_wins_more_points_than_it_loses():
    assert np.mean([_play("atari_pong", "expert", max_steps=1000, seed=seed) for seed in range(4)]) > 0


def test_control_experts_beat_random():
    assert _play("control_pendulum", "expert", max_steps=200) == 200  # Balanced the whole time.
    assert _play("control_pendulum", "random", max_steps=200) < 50
    for seed in range(2):
        assert _play("control_reacher", "expert", max_steps=50, seed=seed) > \
            _play("control_reacher", "random", max_steps=50, seed=seed) + 20


def test_action_noise_bursts_are_random_actions_held_for_up_to_hold_steps():
    env = tasks.make_env("atari_boxing", sticky_actions=0.0, max_steps=10, seed=0)
    noise = experts.ActionNoise(prob=0.2, hold=3)
    noise.reset(np.random.default_rng(0))
    clean = {"action": np.int32(1)}
    noisy, changes, seen = 0, 0, set()
    previous = None
    for _ in range(4000):
        executed, is_noise = noise(env, clean)
        noisy += is_noise
        if is_noise:
            seen.add(int(executed["action"]))
            changes += previous is None or executed is not previous
            previous = executed
        else:
            assert executed is clean
            previous = None
    # A burst starts with prob 0.2 per step after one ends and lasts 1..3 steps (mean 2).
    assert 0.25 < noisy / 4000 < 0.4
    assert 1.7 < noisy / changes < 2.3  # Steps per burst.
    assert seen == set(range(18))
    with pytest.raises(ValueError, match="record_noise"):
        experts.ActionNoise(prob=1.5)


def test_continuous_noise_is_gaussian_in_action_bound_units_and_clipped():
    env = tasks.make_env("control_pendulum", max_steps=10, seed=0)  # Bound 3.
    noise = experts.ActionNoise(std=0.1)
    noise.reset(np.random.default_rng(0))
    values = np.array([noise(env, {"action": np.array([0.5], np.float32)})[0]["action"][0] for _ in range(2000)])
    assert values.std() == pytest.approx(0.3, rel=0.1) and values.mean() == pytest.approx(0.5, abs=0.05)
    assert np.abs(noise(env, {"action": np.array([3.0], np.float32)})[0]["action"]).max() <= 3.0


class _Spy:
    """A policy that always says UP, and an env wrapper that records what was executed."""

    name = "spy"

    def reset(self, env, rng):
        pass

    def act(self, env, observation):
        return {"action": np.int32(1)}


def test_recording_with_noise_stores_the_clean_labels_and_executes_the_noise():
    from data_pipelines import episodes

    env = tasks.make_env("atari_freeway", sticky_actions=0.0, max_steps=300, seed=0)
    executed = []
    step = env.step
    env.step = lambda action: (executed.append(int(action)), step(action))[1]
    steps, _, noisy = episodes._rollout(env, "atari_freeway", _Spy(), experts.ActionNoise(prob=0.3, hold=2),
                                        np.random.default_rng(0), noop_max=0, keep=True)
    assert set(steps["action"]["action"].tolist()) == {1}  # Never a noise action as a label.
    off_label = sum(a != 1 for a in executed)
    assert len(executed) == 300 and {0, 2} <= set(executed)  # Noise did reach the env...
    assert off_label <= noisy < 300  # ...as counted (a noise burst may pick UP too).


@pytest.mark.slow
@pytest.mark.parametrize("name,target", [("atari_pong", 0.0), ("atari_breakout", 30.0), ("atari_boxing", 30.0)])
def test_atari_experts_are_strong_under_evaluation_settings(name, target):
    """Mean return over 8 seeds, sticky actions 0.25, 1000 steps (datasets store 30-episode means)."""
    assert np.mean([_play(name, "expert", max_steps=1000, seed=seed) for seed in range(8)]) > target


class _RamOnly:
    """The part of ALE an expert may read: on-screen state from RAM. Anything else (cloneState, act) fails."""

    def __init__(self, ale, ram=None):
        self._ale, self._ram = ale, ram

    def getRAM(self):  # noqa: N802 - ALE's name.
        return self._ale.getRAM() if self._ram is None else self._ram.copy()

    def getMinimalActionSet(self):  # noqa: N802
        return self._ale.getMinimalActionSet()

    def __getattr__(self, name):
        raise AssertionError(f"An expert called ale.{name}: experts may only read what the screen shows.")


class _View:
    """An env as an expert sees it: the action space, and RAM (live, or a recorded `ram`) via `_RamOnly`."""

    def __init__(self, env, ram=None):
        self.action_space = env.action_space
        self.unwrapped = type("Unwrapped", (), {"ale": _RamOnly(env.unwrapped.ale, ram)})()


ATARI = [n for n in tasks.task_names() if n.startswith("atari_")]


@pytest.mark.parametrize("name", ATARI)
def test_atari_experts_decide_each_step_from_the_last_few_screens(name):
    """Only RAM (on-screen positions) is read, and the action is a function of the last `history` reads.

    A fresh expert shown only the RAM of the last `history` steps chooses what the running expert chose,
    so there is no hidden timer, held plan or queue: the frames in the model's context carry the decision.
    """
    env = tasks.make_env(name, sticky_actions=0.25, max_steps=400, seed=1)
    observation, _ = env.reset()
    expert = experts.make_policy(name)
    expert.reset(_View(env), np.random.default_rng(0))
    noise = experts.ActionNoise(prob=0.1, hold=3)
    noise.reset(np.random.default_rng(1))
    rams, checked = [], 0
    for t in range(400):
        rams.append(env.unwrapped.ale.getRAM().copy())
        action = int(expert.act(_View(env), observation)["action"])
        if t % 7 == 0:
            fresh = experts.make_policy(name)
            fresh.reset(_View(env, rams[0]), np.random.default_rng(99))
            for ram in rams[-expert.history:]:
                replayed = int(fresh.act(_View(env, ram), observation)["action"])
            assert replayed == action, t
            checked += 1
        executed, _ = noise(env, {"action": np.int32(action)})
        observation, _, terminated, truncated, _ = env.step(int(executed["action"]))
        if terminated or truncated:
            break
    assert checked > 10


def test_action_errors_replace_that_share_of_actions_by_random_other_ones():
    env = tasks.make_env("atari_boxing", sticky_actions=0.0, max_steps=10, seed=0)
    errors = experts.ActionErrors(0.3)
    errors.reset(np.random.default_rng(0))
    clean = {"action": np.int32(5)}
    executed = [errors(env, clean) for _ in range(4000)]
    wrong = [int(a["action"]) for a, is_error in executed if is_error]
    assert all(a is clean for a, is_error in executed if not is_error)
    assert 0.27 < len(wrong) / 4000 < 0.33 and 5 not in wrong and set(wrong) == set(range(18)) - {5}
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        experts.ActionErrors(1.5)
    reacher = experts.ActionErrors(0.5)
    reacher.reset(np.random.default_rng(0))
    with pytest.raises(ValueError, match="need discrete actions"):
        reacher(tasks.make_env("control_reacher", max_steps=5), {"action": np.zeros(2, np.float32)})


def test_expert_scores_less_the_more_of_its_actions_are_errors():
    run = lambda rate: episodes.evaluate("atari_freeway", "expert", episodes=1, max_steps=300, error_rate=rate)[0]
    clean, erring, mostly_wrong = run(0.0), run(0.2), run(0.6)
    assert clean > erring > mostly_wrong == 0.0  # Random play scores 0 in Freeway.


def test_expert_shadow_reports_agreement_and_executes_the_players_action():
    """The shadowing expert sees the player's states and is asked every step; the player's action runs."""
    record = []
    env = experts.ExpertShadow(tasks.make_env("atari_breakout", sticky_actions=0.0, max_steps=60, seed=0),
                               experts.make_policy("atari_breakout"), record.append)
    twin = tasks.make_env("atari_breakout", sticky_actions=0.0, max_steps=60, seed=0)
    expert = experts.make_policy("atari_breakout")
    observation, _ = env.reset(seed=0)
    twin.reset(seed=0)
    expert.reset(twin, np.random.default_rng(0))
    wanted, played = [], [1, 1, 1, *([2, 2, 0, 3, 3, 0] * 10)]  # Serve, then sweep; the twin replays it.
    for action in played:
        wanted.append(int(expert.act(twin, {})["action"]))
        observation, *_ = env.step(action)
        twin.step(action)
        np.testing.assert_array_equal(env.unwrapped.ale.getRAM(), twin.unwrapped.ale.getRAM())
    assert record == [w == a for w, a in zip(wanted, played)] and any(record) and not all(record)


def test_expert_labels_keep_the_players_states_with_the_experts_actions():
    """DAgger's data: every state the player reached, labelled with what the expert would have done there;
    the player's actions run unchanged and each episode is handed over at the next reset or at close."""
    kept, expected = [], []
    env = experts.ExpertLabels(tasks.make_env("atari_breakout", sticky_actions=0.0, max_steps=40, seed=0),
                               experts.make_policy("atari_breakout"),
                               lambda *episode: kept.append(episode))
    twin = tasks.make_env("atari_breakout", sticky_actions=0.0, max_steps=40, seed=0)
    expert = experts.make_policy("atari_breakout")
    played = [1, 1, 1, *([2, 2, 0, 3, 3, 0] * 10)]
    for episode_seed in (0, 1):
        env.reset(seed=episode_seed)
        assert len(kept) == episode_seed  # The episode before is handed over when the next one starts.
        twin_observation, _ = twin.reset(seed=episode_seed)
        expert.reset(twin, np.random.default_rng(0))
        frames, wanted, rewards = [], [], []
        for action in played:
            frames.append(twin_observation["frame"])
            wanted.append(int(expert.act(twin, twin_observation)["action"]))
            _, _, terminated, truncated, _ = env.step(action)
            twin_observation, twin_reward, *_ = twin.step(action)
            np.testing.assert_array_equal(env.unwrapped.ale.getRAM(), twin.unwrapped.ale.getRAM())
            rewards.append(float(twin_reward))
            if terminated or truncated:
                break
        expected.append((np.stack(frames), wanted, rewards))
    env.close()  # ... and the last one at close.
    assert len(kept) == 2
    for (observations, labels, kept_rewards, kept_terminated), (frames, wanted, rewards) in zip(kept, expected):
        np.testing.assert_array_equal(np.stack([o["frame"] for o in observations]), frames)
        assert [int(label["action"]) for label in labels] == wanted and len(set(wanted)) > 1
        assert wanted != played[:len(wanted)] and kept_rewards == rewards and len(wanted) == 40
        assert not kept_terminated  # Truncated at the step cap, not a game over.


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_expert_labels_execute_the_experts_action_on_a_share_beta_of_steps(beta):
    """DAgger's mixing: on a share beta of steps the expert's action runs instead of the player's, the
    label is the expert's on every step, and the draws are seeded (a recollected round is the same)."""
    def run() -> tuple[list[int], list[int], experts.ExpertLabels]:
        kept, executed = [], []
        inner = tasks.make_env("atari_breakout", sticky_actions=0.0, max_steps=60, seed=0)
        step = inner.step
        inner.step = lambda action: (executed.append(int(action)), step(action))[1]
        env = experts.ExpertLabels(inner, experts.make_policy("atari_breakout"), lambda *e: kept.append(e),
                                   seed=3, beta=beta)
        env.reset(seed=0)
        for _ in range(60):
            if any(env.step(0)[2:4]):
                break
        env.close()
        return [int(label["action"]) for label in kept[0][1]], executed, env

    labels, executed, env = run()
    draws = np.random.default_rng([3, 1]).random(60) < beta  # The wrapper's mixing draws (seed 3).
    assert executed == [label if mixed else 0 for label, mixed in zip(labels, draws)]
    expert_steps = [i for i, a in enumerate(executed) if a != 0]
    assert all(executed[i] == labels[i] for i in expert_steps)  # What ran instead of NOOP was the label.
    assert env.steps == len(labels) == 60 and env.expert_steps >= len(expert_steps)
    if beta == 0.0:
        assert executed == [0] * 60 and env.expert_steps == 0
    elif beta == 1.0:
        assert executed == labels and env.expert_steps == 60
    else:
        assert 15 <= env.expert_steps <= 45 and expert_steps  # About half, and the expert did act.
    assert run()[:2] == (labels, executed)  # Seeded.


def test_expert_labels_let_the_player_act_first_on_the_named_labels_up_to_the_cap():
    """Mixing waits while the expert's label is a player-first action (Breakout's FIRE on a ball-less
    screen), for at most `player_first_steps` steps in a row; then the expert's share applies again."""
    kept, executed = [], []
    inner = tasks.make_env("atari_breakout", sticky_actions=0.0, max_steps=30, seed=0)
    step = inner.step
    inner.step = lambda action: (executed.append(int(action)), step(action))[1]
    env = experts.ExpertLabels(inner, experts.make_policy("atari_breakout"), lambda *e: kept.append(e), seed=3,
                               beta=1.0, player_first_labels=(experts.atari.BREAKOUT_FIRE,), player_first_steps=3)
    env.reset(seed=0)
    for _ in range(30):
        env.step(0)
    env.close()
    labels = [int(label["action"]) for label in kept[0][1]]
    fire = experts.atari.BREAKOUT_FIRE
    assert labels[:4] == [fire] * 4  # No ball in play at the start: the expert serves.
    assert executed[:3] == [0, 0, 0] and executed[3] == fire  # The player's 3 steps, then the expert's serve.
    assert executed[3:] == labels[3:] and env.player_first_taken == 3 and env.expert_steps == 27


def test_expert_labels_refuse_a_beta_outside_0_1():
    with pytest.raises(ValueError, match="beta is a probability"):
        experts.ExpertLabels(tasks.make_env("atari_freeway", max_steps=10, seed=0),
                             experts.make_policy("atari_freeway"), lambda *e: None, beta=1.5)


def test_an_executed_continuous_expert_action_is_clipped_to_the_bound():
    """On a mixed step the expert's continuous label runs through `tasks.action_to_env`, as the recorder and
    the rollout send actions: clipped to the action bound; the stored label stays the expert's own."""
    class Overreaching:
        def reset(self, env, rng):
            del env, rng

        def act(self, env, observation):
            del env, observation
            return {"action": np.array([7.5], np.float32)}

    kept, executed = [], []
    inner = tasks.make_env("control_pendulum", max_steps=5, seed=0)
    step = inner.step
    inner.step = lambda action: (executed.append(np.asarray(action).copy()), step(action))[1]
    env = experts.ExpertLabels(inner, Overreaching(), lambda *e: kept.append(e), beta=1.0,
                               to_env=lambda label: tasks.action_to_env("control_pendulum", label))
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.zeros(1, np.float32))
    env.close()
    bound = float(inner.action_space.high[0])
    assert bound < 7.5 and [a.tolist() for a in executed] == [[bound]] * 3
    assert [label["action"].tolist() for label in kept[0][1]] == [[7.5]] * 3
