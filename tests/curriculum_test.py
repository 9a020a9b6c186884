"""The few-shot curriculum's late stage (`config.data.fewshot_late_step`): from that step on, fresh episodes
are drawn with the late text and identical shares (data_pipelines.stream.curriculum_config), and
`make train` pauses there to rebuild its stream (gato_jax.main.train_in_stages)."""
from __future__ import annotations

import ml_collections
import pytest

from data_pipelines import documents, stream
from gato_jax import cli, dagger
from gato_jax import main as train_lib

SIZE, SEED = 32, 3


def staged_config(late_step: int = 6) -> ml_collections.ConfigDict:
    config = cli.load_experiment("experiments/vision_language.py:smoke")
    config.num_train_steps = 10
    config.data.fewshot_train_text, config.data.fewshot_train_identical = 0.5, 0.5
    config.data.fewshot_late_step = late_step
    config.data.fewshot_late_text, config.data.fewshot_late_identical = 0.1, 0.2
    return config


def shares(config: ml_collections.ConfigDict) -> tuple[float, float]:
    return config.data.fewshot_train_text, config.data.fewshot_train_identical


def test_the_late_shares_start_at_the_late_step_and_leave_the_run_config_alone():
    config = staged_config()
    assert [shares(stream.curriculum_config(config, s)) for s in (0, 5, 6, 9)] == [(0.5, 0.5)] * 2 + [(0.1, 0.2)] * 2
    assert stream.curriculum_config(config, 5) is config and shares(config) == (0.5, 0.5)
    late = stream.curriculum_config(config, 6)
    assert late.to_dict() == {**config.to_dict(), "data": {**config.data.to_dict(), "fewshot_train_text": 0.1,
                                                           "fewshot_train_identical": 0.2}}
    assert [stream.next_curriculum_stop(config, s) for s in (0, 5, 6, 9)] == [6, 6, 10, 10]
    one_stage = staged_config(late_step=0)
    assert stream.curriculum_config(one_stage, 9) is one_stage and stream.next_curriculum_stop(one_stage, 0) == 10


def test_a_lower_late_share_reshows_only_the_episodes_between_the_shares():
    """Episode i keeps its draws: text-key episodes at share 0.1 are text-key at 0.5 too, and the ones the late
    stage turns into images are the same episodes (classes, words, values) with images instead of text."""
    early = documents.FreshEpisodes(SIZE, SEED, max_shots=4, text_keys=0.5)
    late = documents.FreshEpisodes(SIZE, SEED, max_shots=4, text_keys=0.1)
    early_text = {i for i in range(60) if "text_keys" in early[i]["meta"]}
    late_text = {i for i in range(60) if "text_keys" in late[i]["meta"]}
    assert late_text < early_text and len(late_text) < len(early_text) - 10
    for i in sorted(early_text - late_text)[:5]:
        meta = early[i]["meta"]
        meta.pop("text_keys")
        assert meta == late[i]["meta"]


class StagedRun:
    """Stands in for checkpoints, the stream and the trainer: records the shares each stage's stream got."""

    def __init__(self, monkeypatch, stop_short_at: int | None = None):
        self.step, self.stop_short_at, self.stages = 0, stop_short_at, []
        monkeypatch.setattr(train_lib, "_resume_step", lambda config, workdir: self.step)
        monkeypatch.setattr(dagger, "collect_due", lambda *a, **k: None)
        monkeypatch.setattr(train_lib.stream, "build_train_data", lambda config, *a, **k: shares(config))
        monkeypatch.setattr(train_lib, "train_and_evaluate", self.train)

    def train(self, config, workdir, data, stop_after):
        assert shares(config) == (0.5, 0.5), "checkpoints keep the run's own config, late shares in their fields"
        self.stages.append((self.step, stop_after, data))
        self.step = self.stop_short_at if self.stop_short_at is not None else stop_after
        return [{"step": self.step}]


def test_training_pauses_at_the_late_step_and_draws_the_late_shares_after_it(monkeypatch, tmp_path):
    run = StagedRun(monkeypatch)
    rows = train_lib.train_in_stages(staged_config(), str(tmp_path), {})
    assert run.stages == [(0, 6, (0.5, 0.5)), (6, 10, (0.1, 0.2))] and [r["step"] for r in rows] == [6, 10]
    resumed = StagedRun(monkeypatch)
    resumed.step = 8  # A run stopped in the late stage resumes in it.
    train_lib.train_in_stages(staged_config(), str(tmp_path), {})
    assert resumed.stages == [(8, 10, (0.1, 0.2))]


def test_a_stage_stopped_by_a_signal_before_the_late_step_ends_training(monkeypatch, tmp_path):
    run = StagedRun(monkeypatch, stop_short_at=4)
    train_lib.train_in_stages(staged_config(), str(tmp_path), {})
    assert run.stages == [(0, 6, (0.5, 0.5))]


def test_a_late_step_at_or_past_the_end_is_refused():
    config = staged_config(late_step=10)
    with pytest.raises(cli.UsageError, match="fewshot_late_step=10 is at or past num_train_steps=10"):
        cli.check_config(config)
    cli.check_config(staged_config(late_step=9))


def test_resuming_with_another_late_stage_is_refused():
    """A checkpoint keeps its run's config: resuming it under other late-stage settings (or under the late stage
    when it trained in one stage, whose checkpoints lack the fields) would change its data mid-run."""
    config = staged_config()
    stream.check_resumed_curriculum(staged_config(), config, "runs/x")
    with pytest.raises(cli.UsageError, match=r"fewshot_late_step=0, this run asks for 6; pass "
                                             r"--config.data.fewshot_late_step=0 to resume it"):
        stream.check_resumed_curriculum(ml_collections.ConfigDict({"data": {}}), config, "runs/x")
    other = staged_config()
    other.data.fewshot_late_identical = 0.3
    with pytest.raises(cli.UsageError, match="config.data.fewshot_late_identical=0.3, this run asks for 0.2"):
        stream.check_resumed_curriculum(other, config, "runs/x")
