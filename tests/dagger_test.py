"""DAgger rounds: the model's own states labelled by the expert (data_pipelines.onpolicy), mixed into a task's
training windows (data_pipelines.stream.with_onpolicy), collected at the configured steps of `make train`
(gato_jax.dagger, gato_jax.main.train_in_stages)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from data_pipelines import episodes, experts, onpolicy, sources, stream, tasks
from gato_jax import cli, dagger
from gato_jax import main as train_lib
from gato_jax.load import read_meta
from gato_jax.rollout.checkpoint_eval import EvalSettings
from gato_jax.tokenizers.vocab import VocabLayout

TASK = "atari_breakout"
PLAYED = [1, 1, 1, *([2, 2, 0, 3, 3, 0] * 5)]  # Serve, then sweep.


def play_two_episodes(wrap, seen: list) -> dict:
    """Two short episodes of a fixed action sequence in wrapped envs; `seen` gets each step's (frame, the
    expert's action on a twin env that plays the same)."""
    for seed in (3, 4):
        env = wrap(tasks.make_env(TASK, sticky_actions=0.0, max_steps=12 + seed, seed=seed))
        twin = tasks.make_env(TASK, sticky_actions=0.0, max_steps=12 + seed, seed=seed)
        expert = experts.make_policy(TASK)
        observation, _ = env.reset(seed=seed)
        twin.reset(seed=seed)
        expert.reset(twin, np.random.default_rng(0))
        for action in PLAYED:
            seen.append((observation["frame"], int(expert.act(twin, observation)["action"])))
            observation, _, terminated, truncated, _ = env.step(action)
            twin.step(action)
            if terminated or truncated:
                break
        env.close()
    return {"played_return": 0.0, "played_by": "the model"}


@pytest.fixture(scope="module")
def round_root(tmp_path_factory) -> tuple[Path, list]:
    root, seen = tmp_path_factory.mktemp("round"), []
    onpolicy.record_round(TASK, root, tasks.task_spec(TASK), lambda wrap: play_two_episodes(wrap, seen),
                          {"round_step": 7})
    return root, seen


def test_a_round_is_a_task_dataset_of_the_models_states_and_the_experts_labels(round_root):
    root, seen = round_root
    stored = episodes.load_episodes(root, TASK, "train")
    assert len(stored) == 2 and [len(ep["steps"]["reward"]) for ep in stored] == [15, 16]
    frames = np.concatenate([ep["steps"]["observation"]["frame"] for ep in stored])
    labels = np.concatenate([ep["steps"]["action"]["action"] for ep in stored])
    np.testing.assert_array_equal(frames, np.stack([f for f, _ in seen]))
    assert labels.tolist() == [a for _, a in seen] != PLAYED[:15] + PLAYED[:16]
    meta = episodes.load_metadata(root, TASK)
    assert meta["round_step"] == 7 and meta["splits"] == {"train": 2} and meta["steps"] == {"train": 31}
    assert meta["policies"]["recorded"] == onpolicy.POLICY
    assert meta["beta"] == 0.0 and meta["expert_executed_share"] == 0.0  # The model acted on every step.
    info = (episodes.dataset_dir(root, TASK) / "dataset_info.json").read_text()
    assert "labelled by its expert (DAgger)" in info and "Expert demonstrations" not in info
    with pytest.raises(ValueError, match="no split 'test'"):  # Training data only: held-out stays the expert's.
        episodes.load_episodes(root, TASK, "test")
    assert onpolicy.has_round(root, TASK) and not onpolicy.has_round(root, "atari_pong")


def test_a_failed_or_empty_round_leaves_no_dataset(tmp_path):
    def crash(wrap):
        play_two_episodes(wrap, [])
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        onpolicy.record_round(TASK, tmp_path, tasks.task_spec(TASK), crash, {})
    with pytest.raises(ValueError, match="no episode"):
        onpolicy.record_round(TASK, tmp_path, tasks.task_spec(TASK), lambda wrap: {}, {})
    with pytest.raises(ValueError, match="no expert"):
        onpolicy.record_round("text", tmp_path, tasks.task_spec(TASK), lambda wrap: {}, {})
    assert not onpolicy.has_round(tmp_path, TASK) and not list((tmp_path / TASK).iterdir())  # No half folder.


def stream_config(share: float) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict({"seq_len": 3 * 27, "data": {"prompt_prob": 0.0, "prompt_end_fraction": 0.5},
                                        "dagger": {"share": share}})
    return config


def test_with_onpolicy_mixes_the_rounds_of_the_task_at_its_share(round_root, tmp_path):
    root, _ = round_root
    spec, layout = tasks.task_spec(TASK), VocabLayout(1000, 1024, 1024)
    expert_episodes = [{"steps": {"observation": {"frame": np.zeros((9, 80, 80, 1), np.uint8)},
                                  "action": {"action": np.zeros(9, np.int32)}}}]
    expert = sources.ControlSource(spec, layout, sources.FlatEpisodes.from_episodes(expert_episodes, spec),
                                   3 * 27, prompt_prob=0.0, prompt_end_fraction=0.5)
    assert stream.with_onpolicy(stream_config(0.5), expert, [tmp_path], layout) is expert  # No round of it there.
    mix = stream.with_onpolicy(stream_config(0.25), expert, [tmp_path, root], layout)
    assert isinstance(mix, sources.SourceMix) and mix.sources[0] is expert
    np.testing.assert_allclose(mix.cumulative, [0.75, 1.0])
    assert mix.sources[1].prompt_episodes is expert.episodes and mix.sources[1].episodes.num_episodes == 2
    only_rounds = stream.with_onpolicy(stream_config(1.0), expert, [root], layout)
    for i in range(5):  # Every window from the round: Breakout's frames, never the expert's black ones.
        assert only_rounds(np.random.default_rng(i)).patches.any()
    assert not expert(np.random.default_rng(0)).patches.any()


def smoke_config(steps=(5, 12)) -> ml_collections.ConfigDict:
    config = cli.load_experiment("experiments/atari_mix.py:smoke")
    config.unlock()
    config.dagger.steps = steps
    return config


def test_round_steps_stops_and_tasks():
    config = smoke_config((12, 5))
    assert dagger.round_steps(config) == [5, 12]
    assert [dagger.next_stop(config, s) for s in (0, 4, 5, 11, 12, 19)] == [5, 5, 12, 12, 20, 20]
    assert dagger.rounds_before(config, "w", 11) == [Path("w/dagger/step_5")]
    assert sorted(dagger.round_tasks(config)) == ["atari_boxing", "atari_breakout", "atari_freeway", "atari_pong"]
    rounds = [set(dagger.round_settings(config, s).seed + np.arange(config.dagger.episodes)) for s in (5, 12)]
    evaluated = set(config.seed + np.arange(config.eval.episodes))  # `make eval` resets with these.
    assert not rounds[0] & rounds[1] and not (rounds[0] | rounds[1]) & evaluated
    config.dagger.tasks = ("atari_pong",)
    assert dagger.round_tasks(config) == ["atari_pong"]
    dagger.check(config, 1)


def test_an_evaluation_seed_offset_moves_make_evals_episodes_and_not_the_rounds():
    config = smoke_config()
    before = EvalSettings.from_config(config).seed, dagger.round_settings(config, 5).seed
    config.eval.seed_offset = cli.MAX_EVAL_SEED_OFFSET - 1
    settings = EvalSettings.from_config(config)
    assert settings.seed == config.seed + cli.MAX_EVAL_SEED_OFFSET - 1 != before[0]
    assert dagger.round_settings(config, 5).seed == before[1]
    last_evaluated = settings.seed + config.eval.episodes - 1
    assert last_evaluated < dagger.ROUND_SEED  # Still apart from every round's episodes.


def test_the_expert_co_drives_only_the_mixed_tasks_rounds():
    config = smoke_config()
    config.dagger.beta, config.dagger.mixed_tasks = 0.5, ()
    assert {dagger.round_beta(config, n) for n in dagger.round_tasks(config)} == {0.5}  # () = every round task.
    config.dagger.mixed_tasks = ("atari_breakout", "atari_boxing")
    assert [dagger.round_beta(config, n) for n in ("atari_breakout", "atari_boxing", "atari_pong")] == [0.5, 0.5, 0.0]
    config.dagger.beta = 0.0
    assert dagger.round_beta(config, "atari_breakout") == 0.0


@pytest.mark.parametrize(("change", "says"), [
    (dict(tasks=("text",)), "not control tasks"),
    (dict(tasks=("atari_pongg",)), "not control tasks"),
    (dict(processes=2), "one process"),
    (dict(share=0.0), "draws nothing"),
    (dict(mixed=("captions",)), "mixed_tasks names \\['captions'\\], not control tasks"),
    (dict(first={"captions": (1,)}), "model_first_labels names \\['captions'\\], not Atari tasks"),
    (dict(first={"atari_pongg": (1,)}), "model_first_labels names \\['atari_pongg'\\]"),
    (dict(first={"atari_breakout": (1, 4)}), "model_first_labels.atari_breakout has \\[4\\], not actions of the game"),
    (dict(first={"atari_breakout": ("FIRE",)}), "atari_breakout has \\['FIRE'\\], not action indices"),
    (dict(first={"atari_breakout": 1}), "model_first_labels.atari_breakout is 1, not a tuple"),
    (dict(first={"atari_breakout": ("1.5", 2.5, True)}), "atari_breakout has \\['1.5', 2.5, True\\], not action"),
    (dict(first_steps=-1), "model_first_steps=-1 counts steps"),
])
def test_rounds_that_cannot_run_are_refused_in_one_line(change, says):
    config = smoke_config()
    config.dagger.tasks = change.get("tasks", ())
    config.dagger.mixed_tasks = change.get("mixed", ())
    config.dagger.share = change.get("share", 0.5)
    config.dagger.model_first_labels = ml_collections.ConfigDict(change.get("first", {"atari_breakout": (1,)}))
    config.dagger.model_first_steps = change.get("first_steps", 8)
    with pytest.raises(cli.UsageError, match=says):
        dagger.check(config, change.get("processes", 1))


@pytest.mark.parametrize(("steps", "episodes", "says"), [
    ((5, 20), 2, "at or past num_train_steps"), ((0,), 2, "distinct whole training steps"),
    ((5, 5), 2, "distinct whole training steps"), ((5,), 1000, "in 1..999"),
])
def test_bad_round_settings_are_refused(steps, episodes, says):
    config = smoke_config(steps)
    config.dagger.episodes = episodes
    with pytest.raises(cli.UsageError, match=says):
        cli.check_config(config)


def test_resuming_with_other_rounds_than_the_checkpoint_trained_on_is_refused():
    config = smoke_config((5, 12))
    dagger.check_resumed_rounds(config, [], 5)  # The round at 5 is collected after the step-5 checkpoint.
    dagger.check_resumed_rounds(config, ["/elsewhere/dagger/step_5"], 12)  # Compared by round, not path.
    dagger.check_resumed_rounds(config, ["w/dagger/step_5", "w/dagger/step_12"], 17)
    with pytest.raises(cli.UsageError, match=r"trained on DAgger rounds \['step_5'\], but .* puts none"):
        dagger.check_resumed_rounds(smoke_config(()), ["w/dagger/step_5"], 12)
    with pytest.raises(cli.UsageError, match="resume with the config.dagger.steps it was trained with"):
        dagger.check_resumed_rounds(smoke_config((3, 12)), ["w/dagger/step_5"], 12)


def test_labelled_hooks_wrap_every_env_and_drop_the_shadow():
    made, hooks = [], dagger.TaskHooks(make_env=lambda name, **kw: (name, kw), action_to_env=None,
                                       load_episodes=None, load_metadata=None, windows=None,
                                       shadow_expert=lambda *a: pytest.fail("shadowed"))
    wrapped = dagger.labelled_hooks(hooks, lambda env: made.append(env) or "wrapped")
    assert wrapped.make_env(TASK, seed=3) == "wrapped" and made == [(TASK, {"seed": 3})]
    assert wrapped.shadow_expert is None


class FakeRun:
    """Stands in for checkpoints, collection, the stream and the trainer: records what each stage got."""

    def __init__(self, monkeypatch, workdir: Path, step: int = 0, stop_short: bool = False):
        self.step, self.workdir, self.stop_short, self.stages, self.collected = step, workdir, stop_short, [], []
        monkeypatch.setattr(train_lib, "_resume_step", lambda config, w: self.step)
        monkeypatch.setattr(dagger, "collect_round", self.collect)
        monkeypatch.setattr(train_lib.stream, "build_train_data", self.build)
        monkeypatch.setattr(train_lib, "train_and_evaluate", self.train)

    def collect(self, config, workdir, step, dirs, progress=True):
        self.collected.append(step)
        for name in dagger.round_tasks(config):
            where = episodes.dataset_dir(dagger.round_root(workdir, step), name)
            where.mkdir(parents=True)
            (where / "dataset_info.json").write_text("{}")
            labels, steps = dagger.round_model_first(config, name)
            (where / "metadata.json").write_text(json.dumps({"beta": dagger.round_beta(config, name),
                                                             "model_first_labels": labels,
                                                             "model_first_steps": steps}))

    def build(self, config, process_index, process_count, dirs, onpolicy_roots=()):
        return [Path(r).name for r in onpolicy_roots]

    def train(self, config, workdir, data, stop_after):
        self.stages.append((self.step, stop_after, data))
        self.step = stop_after - (3 if self.stop_short else 0)
        return [{"step": self.step}]


def test_training_pauses_at_each_round_and_trains_on_the_rounds_before(monkeypatch, tmp_path):
    run = FakeRun(monkeypatch, tmp_path)
    rows = train_lib.train_in_stages(smoke_config(), str(tmp_path), {})
    assert run.stages == [(0, 5, []), (5, 12, ["step_5"]), (12, 20, ["step_5", "step_12"])]
    assert run.collected == [5, 12] and [r["step"] for r in rows] == [5, 12, 20]


def test_a_resumed_run_collects_only_the_round_it_lost(monkeypatch, tmp_path):
    run = FakeRun(monkeypatch, tmp_path)
    run.collect(smoke_config(), str(tmp_path), 5, {})
    run.collected, run.step = [], 12  # Killed while collecting the round at 12.
    train_lib.train_in_stages(smoke_config(), str(tmp_path), {})
    assert run.collected == [12] and run.stages == [(12, 20, ["step_5", "step_12"])]


def test_resuming_with_another_beta_than_a_round_was_collected_with_is_refused(monkeypatch, tmp_path):
    run = FakeRun(monkeypatch, tmp_path)
    run.collect(smoke_config(), str(tmp_path), 5, {})
    run.collected, run.step = [], 12
    config = smoke_config()
    config.dagger.beta = 0.25  # atari_mix mixes Breakout and Boxing at 0.5.
    with pytest.raises(cli.UsageError, match="collected with beta 0.5, but this config gives atari_b"):
        train_lib.train_in_stages(config, str(tmp_path), {})
    assert run.collected == [] and run.stages == []  # Refused before any collection or training.


def test_resuming_with_other_model_first_settings_than_a_round_was_collected_with_is_refused(monkeypatch, tmp_path):
    run = FakeRun(monkeypatch, tmp_path)
    run.collect(smoke_config(), str(tmp_path), 5, {})
    run.collected, run.step = [], 12
    config = smoke_config()
    config.dagger.model_first_steps = 4  # atari_mix waits up to 8 steps on Breakout's FIRE.
    with pytest.raises(cli.UsageError, match=r"model_first labels and steps \(\(1,\), 8\), but this config gives "
                                             r"atari_breakout \(\(1,\), 4\)"):
        train_lib.train_in_stages(config, str(tmp_path), {})
    assert run.collected == [] and run.stages == []


def test_a_stage_stopped_by_a_signal_ends_training(monkeypatch, tmp_path):
    run = FakeRun(monkeypatch, tmp_path, stop_short=True)
    train_lib.train_in_stages(smoke_config(), str(tmp_path), {})
    assert run.stages == [(0, 5, [])] and run.collected == []


def test_without_rounds_training_is_one_stage(monkeypatch, tmp_path):
    run = FakeRun(monkeypatch, tmp_path)
    train_lib.train_in_stages(smoke_config(()), str(tmp_path), {})
    assert run.stages == [(0, 20, [])]


@pytest.mark.slow
def test_make_train_collects_the_round_and_a_lost_round_comes_back_the_same(tmp_path, monkeypatch):
    """`make train EXP=atari_mix:smoke` end to end (its round at step 10 of 20): every game's round is stored,
    the checkpoint after it names the round, and a round lost with the checkpoints after it is collected
    again from the step-10 checkpoint, step for step the same (seeded play, seeded sampling)."""
    monkeypatch.setenv("GATO_DATA_DIR", str(tmp_path / "data"))
    workdir = tmp_path / "run"
    smoke = ["--config", "experiments/atari_mix.py:smoke", "--workdir", str(workdir)]
    assert train_lib.main(smoke) == 0
    root = dagger.round_root(workdir, 10)
    first = {n: episodes.load_episodes(root, n, "train") for n in dagger.round_tasks(smoke_config())}
    assert len(first) == 4 and all(len(eps) == 2 for eps in first.values())
    assert read_meta(str(workdir)).data["onpolicy_rounds"] == [str(root)]
    played_by = {n: episodes.load_metadata(root, n)["played_by"] for n in first}
    assert played_by["atari_pong"] == "the model" and "expert" in played_by["atari_breakout"], "a mixed round says so"
    frames = first[TASK][0]["steps"]["observation"]["frame"].copy()
    labels = first[TASK][0]["steps"]["action"]["action"].copy()
    shutil.rmtree(root / TASK)
    shutil.rmtree(workdir / "checkpoints" / "20")
    assert train_lib.main(smoke) == 0
    again = episodes.load_episodes(root, TASK, "train")[0]["steps"]
    np.testing.assert_array_equal(again["observation"]["frame"], frames)
    np.testing.assert_array_equal(again["action"]["action"], labels)


def test_a_round_at_beta_1_is_the_experts_play_and_its_metadata_says_so(round_root, tmp_path):
    """beta = 1 through `record_round`: every executed action is the expert's, whatever the model sends, so
    the stored frames leave those of the model's fixed sequence (the beta-0 round) and the metadata says so."""
    onpolicy.record_round(TASK, tmp_path, tasks.task_spec(TASK), lambda wrap: play_two_episodes(wrap, []),
                          {"round_step": 7}, beta=1.0)
    meta = episodes.load_metadata(tmp_path, TASK)
    assert meta["beta"] == 1.0 and meta["expert_executed_share"] == 1.0
    frames = [np.concatenate([ep["steps"]["observation"]["frame"] for ep in episodes.load_episodes(r, TASK, "train")])
              for r in (round_root[0], tmp_path)]
    assert frames[0].shape == frames[1].shape and not np.array_equal(*frames)


def test_a_round_where_the_model_goes_first_says_so_in_its_metadata(tmp_path):
    """model_first through `record_round`: on the expert's FIRE labels (no ball in play) the mixing waits,
    so at beta 1 the executed share drops below 1 by exactly the share of steps where the model went first."""
    onpolicy.record_round(TASK, tmp_path, tasks.task_spec(TASK), lambda wrap: play_two_episodes(wrap, []),
                          {"round_step": 7}, beta=1.0, model_first=((experts.atari.BREAKOUT_FIRE,), 2))
    meta = episodes.load_metadata(tmp_path, TASK)
    assert meta["model_first_labels"] == [experts.atari.BREAKOUT_FIRE] and meta["model_first_steps"] == 2
    assert 0 < meta["model_first_share"] <= 4 / 31  # At most 2 steps per serve, one serve per episode here.
    assert meta["expert_executed_share"] == pytest.approx(1.0 - meta["model_first_share"])
