"""Every shipped experiment config loads, names known data sources, and fits its model and mesh."""
from __future__ import annotations

import glob
import importlib.util
import os

import jax
import ml_collections
import pytest

from data_pipelines import prepare
from gato_jax import cli
from gato_jax import sharding as sharding_lib
from gato_jax.configs import MODEL_PRESETS
from gato_jax.model import count_params
from gato_jax.model.cost import matmul_params
from gato_jax.tokenizers.vocab import VocabLayout

EXPERIMENTS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "experiments", "*.py")))
CASES = [(path, arg) for path in EXPERIMENTS for arg in (None, "smoke")]
CASES.append((next(p for p in EXPERIMENTS if p.endswith("generalist.py")), "gato_79m"))


def load(path: str, arg: str | None):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.__doc__ and "make train EXP=" in module.__doc__, f"{path} needs a docstring with its command"
    return module.get_config(arg)


@pytest.mark.parametrize(("path", "arg"), CASES, ids=lambda x: os.path.basename(x) if isinstance(x, str) else str(x))
def test_config_loads_and_fits(path, arg):
    from data_pipelines.tasks import task_names

    config = load(path, arg)
    assert config.is_locked
    known = set(task_names()) | {"text", "captions", "documents", "questions", "fewshot"}
    assert set(config.data.mixture) <= known, f"unknown sources {set(config.data.mixture) - known}"
    layout = VocabLayout.from_config(config)
    params = count_params(config.model, layout.padded_size)  # Builds the model abstractly (jax.eval_shape).
    # The FLOPs formula's N (matmul weights) is most of the real model; the rest is the patch ResNet and tables.
    assert 0.5 < matmul_params(config.model, layout.padded_size) / params <= 1.0
    mesh = sharding_lib.make_mesh(config.mesh)
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    assert config.batch_size % batch_shards == 0, f"batch {config.batch_size} over {batch_shards} shards"
    assert jax.device_count() == 8
    cli.check_config(config, prepare.known_sources())  # Every value in range, as the entry points check.


def test_unknown_config_argument_is_a_clear_error():
    with pytest.raises(ValueError, match="use ':smoke'"):
        load(EXPERIMENTS[0], "bogus")


def test_unknown_experiment_names_the_choices():
    with pytest.raises(cli.UsageError, match="unknown experiment 'nope'.*'atari_mix'"):
        cli.load_experiment("experiments/nope.py")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_smoke_shrinks_sizes_and_keeps_the_architecture(path):
    """A smoke run is the experiment's model made tiny: same patching, attention and image encoder, so
    `make train EXP=NAME:smoke` exercises the token layout the full run trains on."""
    full, smoke = load(path, None), load(path, "smoke")
    assert {k: smoke.model[k] for k in MODEL_PRESETS["tiny"]} == MODEL_PRESETS["tiny"]
    # Sub-models (model.prismer) choose their own smoke sizes; every other field stays the experiment's.
    sizes = set(MODEL_PRESETS["tiny"]) | {"preset"}
    kept = lambda m: {k: v for k, v in m.items() if k not in sizes and not isinstance(v, ml_collections.ConfigDict)}
    assert kept(smoke.model) == kept(full.model)


def test_control_mix_games_train_as_in_atari_mix():
    """control_mix's Atari target is atari_mix's, so its games get the same layout, step budget and rounds."""
    from data_pipelines import tasks
    from gato_jax import dagger

    atari, control = (load(next(p for p in EXPERIMENTS if p.endswith(f"/{name}.py")), None)
                      for name in ("atari_mix", "control_mix"))
    for field in ("model.patch_size", "model.patch_stem_stride", "data.frame_history", "num_train_steps",
                  "train.image_position_caps", "train.loss_position_caps", "dagger.steps", "dagger.beta",
                  "dagger.mixed_tasks", "dagger.model_first_labels", "dagger.model_first_steps"):
        a, c = atari, control
        for key in field.split("."):
            a, c = a[key], c[key]
        assert a == c, f"{field}: atari_mix {a}, control_mix {c}"
    games = [n for n in atari.data.mixture if n in tasks.TASKS and tasks.TASKS[n].kind == "atari"]
    assert sorted(dagger.round_tasks(atari)) == sorted(games)
    assert set(games) <= set(dagger.round_tasks(control))
    from data_pipelines.experts import atari as atari_experts  # configs.py (a leaf) writes FIRE as the literal 1.
    assert tuple(atari.dagger.model_first_labels.atari_breakout) == (atari_experts.BREAKOUT_FIRE,)


def test_a_train_seed_offset_reseeds_training_but_not_its_data_or_evaluation():
    from data_pipelines import stream
    from gato_jax.configs import train_seed

    base = cli.load_experiment("experiments/control_mix.py:smoke")
    replicate = cli.load_experiment("experiments/control_mix.py:smoke")
    replicate.unlock()
    replicate.train_seed_offset = 3
    assert (train_seed(base), train_seed(replicate)) == (base.seed, base.seed + 3)
    settings = stream.StreamSettings.from_config(replicate)
    assert (settings.seed, settings.eval_seed) == (base.seed + 3, base.seed)  # Another order, same held-out batches.
    assert prepare.datasets(replicate) == prepare.datasets(base)  # The same prepared data ...
    assert replicate.seed == base.seed  # ... and the same evaluation episodes (config.seed + eval.seed_offset).
    replicate.train_seed_offset = -1
    with pytest.raises(cli.UsageError, match="train_seed_offset = -1 is out of range"):
        cli.check_config(replicate)
