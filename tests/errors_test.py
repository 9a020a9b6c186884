"""Every entry point answers a bad input with one line naming the problem and the fix, a non-zero exit and
no traceback, before any work, and loses nothing on disk (a table of cases through the real `main(argv)`,
two through a subprocess); `--debug` / GATO_DEBUG=1 shows the traceback instead.

Placeholders in argv: {work} a run directory holding a tiny checkpoint (another model and vocabulary than
the experiments'), {empty} an empty directory, {file} a regular file, {image} a 4x4 PNG, {text} a text
file posing as an image. Datasets are looked for under an empty temporary GATO_DATA_DIR, and building
one fails the test: a case that got as far as building data would have checked too late.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from rollout_test import tiny_checkpoint

from data_pipelines import prepare
from gato_jax import bench, cli, sample
from gato_jax import compile as compile_lib
from gato_jax import evaluate as evaluate_lib
from gato_jax import main as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAINS = {"train": train_lib.main, "data": prepare.main, "eval": evaluate_lib.main, "sample": sample.main,
         "compile": compile_lib.main, "bench": bench.main}
SMOKE = ["--config", "experiments/atari_mix.py:smoke"]
TRAIN = [*SMOKE, "--workdir", "{empty}/run"]
EVAL = [*SMOKE, "--workdir", "{work}"]

# (id, entry point, argv, exit status, text the one line must hold)
CASES = [
    ("unknown_experiment", "train", ["--config", "experiments/no_such_exp.py", "--workdir", "{empty}"], 2,
     "unknown experiment 'no_such_exp'"),
    ("unknown_config_argument", "train", ["--config", "experiments/atari_mix.py:bogus", "--workdir", "{empty}"], 2,
     "Unknown config argument 'bogus'"),
    ("unknown_config_field", "train", [*TRAIN, "--config.no_such_field=1"], 2, "unknown config field 'no_such_field'"),
    ("misspelt_config_field", "train", [*TRAIN, "--config.num_train_step=5"], 2,
     "did you mean --config.num_train_steps"),
    ("unknown_task_in_mixture", "data", [*SMOKE, "--config.data.mixture.atari_pongg=1"], 2,
     "did you mean --config.data.mixture.atari_pong"),
    ("value_of_another_type", "train", [*TRAIN, "--config.num_train_steps=many"], 2, "--config.num_train_steps=many"),
    ("negative_steps", "train", [*TRAIN, "--config.num_train_steps=-5"], 2, "num_train_steps = -5 is out of range"),
    ("zero_batch", "train", [*TRAIN, "--config.batch_size=0"], 2, "config.batch_size = 0 is out of range"),
    ("zero_seq_len", "train", [*TRAIN, "--config.seq_len=0"], 2, "config.seq_len = 0 is out of range"),
    ("negative_learning_rate", "train", [*TRAIN, "--config.optimizer.peak_lr=-0.001"], 2,
     "config.optimizer.peak_lr = -0.001"),
    ("nan_learning_rate", "train", [*TRAIN, "--config.optimizer.peak_lr=nan"], 2, "> 0 and finite"),
    ("negative_mixture_weight", "train", [*TRAIN, "--config.data.mixture.atari_pong=-1"], 2,
     "needs weights >= 0 with a sum > 0"),
    ("probability_above_one", "data", [*SMOKE, "--config.data.prompt_prob=1.5"], 2,
     "config.data.prompt_prob = 1.5 is out of range: it must be a probability"),
    ("eval_probability_above_one", "eval", [*EVAL, "--config.eval.sticky_actions=2"], 2,
     "config.eval.sticky_actions = 2.0"),
    ("eval_task_outside_the_mixture", "eval", [*EVAL, "--tasks=control_pendulum"], 2,
     "--tasks names ['control_pendulum'], not control tasks of this experiment's mixture"),
    ("continuous_mean_not_a_bool", "eval", [*EVAL, "--config.eval.continuous_mean=maybe"], 2,
     "--config.eval.continuous_mean=maybe"),
    ("eval_seed_offset_into_dagger_seeds", "eval", [*EVAL, "--config.eval.seed_offset=999999"], 2,
     "config.eval.seed_offset = 999999 is out of range: it must be 0 to 499999"),
    ("seq_len_shorter_than_two_timesteps", "train", [*TRAIN, "--config.seq_len=11"], 2,
     "holds fewer than two timesteps of atari_boxing"),
    ("frame_not_in_patches", "data", [*SMOKE, "--config.data.frame_size=81"], 2, "not a multiple of"),
    ("unknown_frame_filter", "data", [*SMOKE, "--config.data.frame_filter=bicubic"], 2,
     "config.data.frame_filter = 'bicubic' is out of range: it must be 'area' or 'salient'"),
    ("frame_history_beyond_the_channels", "data", [*SMOKE, "--config.data.frame_history=4"], 2,
     "config.data.frame_history = 4 is out of range: it must be 1 to 3"),
    ("dagger_round_past_the_end", "train", [*TRAIN, "--config.dagger.steps=(20,)"], 2,
     "config.dagger.steps (20,) has step(s) [20] at or past num_train_steps=20"),
    ("curriculum_stage_past_the_end", "train", [*TRAIN, "--config.data.fewshot_late_step=20"], 2,
     "config.data.fewshot_late_step=20 is at or past num_train_steps=20"),
    ("curriculum_share_above_one", "train", [*TRAIN, "--config.data.fewshot_late_text=1.5"], 2,
     "config.data.fewshot_late_text = 1.5 is out of range: it must be a share in [0, 1]"),
    ("dagger_task_outside_the_mixture", "train", [*TRAIN, "--config.dagger.tasks=('captions',)"], 2,
     "config.dagger.tasks names ['captions'], not control tasks of the mixture"),
    ("mesh_larger_than_devices", "train", [*TRAIN, "--config.mesh.data=16"], 2, "does not fit the 8 devices"),
    ("batch_not_dividing_mesh", "train", [*TRAIN, "--config.batch_size=12", "--config.mesh.data=8"], 2,
     "does not divide over the 8 batch shards"),
    ("missing_workdir_flag", "train", SMOKE, 2, "--workdir is missing"),
    ("unknown_flag", "train", [*TRAIN, "--no_such_flag=1"], 2, "unknown flag --no_such_flag"),
    ("stray_argument", "train", [*TRAIN, "stray"], 2, "unexpected argument 'stray'"),
    ("unwritable_workdir", "train", [*SMOKE, "--workdir", "{file}/run"], 2, "cannot be created"),
    ("checkpoint_of_another_config", "train", [*SMOKE, "--workdir", "{work}"], 1,
     "use a fresh --workdir or the config it was trained with"),
    ("missing_dataset", "train", [*TRAIN, "--noprepare_data"], 1, "is missing at"),
    ("unwritable_data_dir", "data", [*SMOKE, "--config.data.dir={file}/data"], 2, "Data directory"),
    ("eval_missing_workdir", "eval", [*SMOKE, "--workdir", "{empty}/nope"], 2, "does not exist"),
    ("eval_workdir_without_checkpoint", "eval", [*SMOKE, "--workdir", "{empty}"], 1, "train first"),
    ("eval_checkpoint_of_another_vocabulary", "eval", EVAL, 1, "evaluate with the config the checkpoint was trained"),
    ("eval_missing_step", "eval", [*EVAL, "--step=7"], 1, "No complete checkpoint at step 7"),
    ("eval_curve_with_step", "eval", [*EVAL, "--curve", "--step=7"], 2,
     "--curve measures every checkpoint; drop --step"),
    ("sample_nothing_to_continue", "sample", ["--workdir", "{work}"], 2, "pass --prompt TEXT"),
    ("sample_image_not_a_file", "sample", ["--workdir", "{work}", "--image", "{empty}/none.png"], 2, "is not a file"),
    ("sample_unreadable_image", "sample", ["--workdir", "{work}", "--image", "{text}"], 2, "cannot read --image"),
    ("sample_image_too_small", "sample", ["--workdir", "{work}", "--image", "{image}"], 2, "is 4x4 pixels"),
    ("sample_top_p_out_of_range", "sample", ["--workdir", "{work}", "--prompt", "hi", "--top_p=0"], 2,
     "--top_p in (0, 1]"),
    ("compile_no_devices", "compile", ["--config", "experiments/generalist.py:gato_79m", "--devices=0"], 2,
     "--devices=0 is out of range"),
    ("compile_mesh_not_fitting", "compile", ["--config", "experiments/generalist.py:gato_79m",
                                             "--config.mesh.tensor=16"], 2, "does not fit the 8 devices"),
    ("bench_unknown_benchmark", "bench", ["--only=train_step,warp"], 2, "unknown benchmark(s) ['warp']"),
    ("bench_unknown_experiment", "bench", ["--experiment=experiments/nope.py"], 2, "unknown experiment 'nope'"),
]


@pytest.fixture
def places(tmp_path, monkeypatch):
    """The placeholder paths, an empty data dir, and a guard that fails any attempt to build a dataset."""
    work = tmp_path / "work"
    shutil.copytree(tiny_checkpoint()[0], work)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a directory")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "tiny.png")
    (tmp_path / "text.png").write_text("not an image")
    monkeypatch.setenv("GATO_DATA_DIR", str(tmp_path / "data"))
    for kind in list(prepare._BUILD):
        monkeypatch.setitem(prepare._BUILD, kind, lambda *a, **k: pytest.fail("a dataset was built"))
    return {"work": str(work), "empty": str(tmp_path / "empty"), "file": str(tmp_path / "file"),
            "image": str(tmp_path / "tiny.png"), "text": str(tmp_path / "text.png"), "root": tmp_path}


def snapshot(root) -> dict[str, tuple[int, int]]:
    """Every file under root: (size, mtime in ns)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            stat = os.stat(path)
            out[path] = (stat.st_size, stat.st_mtime_ns)
    return out


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in err and len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


@pytest.mark.parametrize(("entry", "argv", "status", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(entry, argv, status, says, places, capsys):
    before = snapshot(places["root"])
    code = MAINS[entry]([arg.format(**places) for arg in argv])
    _, err = capsys.readouterr()
    line = one_error_line(err)
    assert code == status and says in line, line
    after = snapshot(places["root"])
    assert {p: v for p, v in after.items() if p in before} == before  # Nothing lost or rewritten.


def test_debug_flag_shows_the_traceback(places, capsys):
    code = train_lib.main([*SMOKE, "--workdir", places["empty"], "--config.seq_len=0", "--debug"])
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: config.seq_len")


def test_a_library_error_names_its_type_and_the_debug_switch():
    line = cli.error_line(KeyError("x"))
    assert line.startswith("KeyError: 'x'") and "--debug" in line and cli.DEBUG_ENV in line


@pytest.mark.parametrize(("module", "argv", "says"), [
    ("gato_jax.main", ["--config", "experiments/no_such_exp.py", "--workdir", "x"], "unknown experiment"),
    ("data_pipelines.prepare", [*SMOKE, "--config.no_such_field=1"], "unknown config field"),
])
def test_subprocess_exit_status_and_debug_env(module, argv, says):
    env = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
    run = lambda extra: subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True,
                                       text=True, timeout=120, env={**env, **extra})
    plain = run({})
    assert plain.returncode == 2 and says in one_error_line(plain.stderr) and plain.stdout == ""
    debug = run({cli.DEBUG_ENV: "1"})
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_evaluating_other_frames_than_the_checkpoint_trained_on_is_refused():
    """Held-out episodes and prompts would come from datasets of other frames than the environments show."""
    config = lambda *args: cli.parse(["--config", "experiments/atari_mix.py:smoke", *args], lambda fv: None,
                                     prog="test").config
    trained = config()
    assert evaluate_lib.check_frames(trained, trained) is None
    with pytest.raises(cli.UsageError, match="frame_filter is 'salient' but the checkpoint trained on 'area' frames; "
                                             "pass --config.data.frame_filter=area"):
        evaluate_lib.check_frames(config("--config.data.frame_filter=salient"), trained)


def test_evaluation_plays_the_frames_the_checkpoint_trained_on():
    """A salient-trained checkpoint is rolled out on salient frames; one from before the option on area frames."""
    import ml_collections

    from data_pipelines import tasks

    def first_frame(trained: ml_collections.ConfigDict) -> np.ndarray:
        env = evaluate_lib.checkpoint_task_hooks({}, trained).make_env("atari_freeway", sticky_actions=0.0,
                                                                         max_steps=5, seed=0)
        observation, _ = env.reset(seed=0)
        screen = env.unwrapped.ale.getScreenGrayscale()
        return observation["frame"][..., 0], screen

    rows = tasks.get_task("atari_freeway").screen_rows
    salient, screen = first_frame(ml_collections.ConfigDict({"data": {"frame_size": 80, "frame_filter": "salient"}}))
    np.testing.assert_array_equal(salient, tasks.resize_frame(screen, 80, rows, "salient")[..., 0])
    older, screen = first_frame(ml_collections.ConfigDict({"data": {"frame_size": 80}}))
    np.testing.assert_array_equal(older, tasks.resize_frame(screen, 80, rows, "area")[..., 0])
