"""Datasets keyed by their settings: side by side, found again, adopted from the earlier layout, and never
half-built in a place that reads as complete."""
from __future__ import annotations

import json

import pytest

from data_pipelines import episodes, prepare, published
from gato_jax import cli
from gato_jax.errors import DataError

ATARI_MIX = "experiments/atari_mix.py"


def config(arg: str | None = None, **data):
    c = cli.load_experiment(f"{ATARI_MIX}:{arg}" if arg else ATARI_MIX)
    for key, value in data.items():
        c.data[key] = value
    return c


def test_smoke_and_full_datasets_live_side_by_side(monkeypatch, tmp_path):
    monkeypatch.setenv("GATO_DATA_DIR", str(tmp_path))
    full, smoke = prepare.dataset_dirs(config()), prepare.dataset_dirs(config("smoke"))
    assert set(full) == set(smoke) == {"text", "captions", "atari_pong", "atari_breakout", "atari_boxing",
                                        "atari_freeway"}
    assert full["text"] == smoke["text"]  # One corpus: the tokenizer is keyed by its size inside it.
    for name in ("captions", "atari_pong"):
        assert full[name] != smoke[name] and full[name].parent == smoke[name].parent == tmp_path
        assert full[name].name.startswith(f"{name}-") and len(full[name].name) == len(name) + 9
    assert prepare.dataset_dirs(config()) == full  # Same settings, same place.
    more = prepare.dataset_dirs(config(episodes_per_task=61))
    assert more["atari_pong"] != full["atari_pong"] and more["captions"] == full["captions"]


def write_control_dataset(where, name: str, settings: dict) -> None:
    """The files `prepare` checks for a finished control dataset (metadata and TFDS info)."""
    path = episodes.dataset_dir(where, name)
    path.mkdir(parents=True)
    (path / "metadata.json").write_text(json.dumps({"settings": settings}))
    (path / "dataset_info.json").write_text("{}")


def test_datasets_of_the_earlier_layout_are_moved_not_rebuilt(tmp_path):
    c = config("smoke")
    wanted = prepare.datasets(c)["atari_pong"]
    write_control_dataset(tmp_path / "smoke", "atari_pong", wanted.settings)  # Earlier smoke layout.
    other = dict(prepare.datasets(config())["atari_boxing"].settings)
    write_control_dataset(tmp_path, "atari_boxing", other)  # Full settings: the smoke run must not take it.
    moved = prepare.adopt_legacy(tmp_path, prepare.datasets(c).values())
    assert moved == [wanted.dir(tmp_path)] and wanted.is_complete(tmp_path)
    assert not (tmp_path / "smoke" / "atari_pong").exists() and (tmp_path / "atari_boxing").is_dir()


def test_an_interrupted_build_leaves_nothing_that_reads_as_complete(monkeypatch, tmp_path):
    """`make data` stopped mid-write (an exception, or a kill that leaves the temporary folder behind): the
    dataset's folder may exist, but the next run reports it half-written and rebuilds it."""
    c = config("smoke", mixture={"atari_pong": 1.0}, dir=str(tmp_path))
    ds = prepare.datasets(c)["atari_pong"]

    def interrupted(config, ds, where, progress):
        final = episodes.dataset_dir(where, ds.name)
        killed = final.parent / f".{final.name}.tmp-killed"  # What a SIGKILL leaves: no cleanup ran.
        killed.mkdir(parents=True)
        (killed / "metadata.json").write_text(json.dumps({"settings": ds.settings}))
        with published.atomic_directory(final, replace=True) as tmp:
            (tmp / "metadata.json").write_text(json.dumps({"settings": ds.settings}))
            raise KeyboardInterrupt

    monkeypatch.setitem(prepare._BUILD, "control", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_all(c, progress=False)
    assert ds.dir(tmp_path).exists() and not ds.is_complete(tmp_path)
    with pytest.raises(DataError, match=r"'atari_pong'.*half-written.*make data EXP="):
        prepare.check_prepared(c)
    built = []
    monkeypatch.setitem(prepare._BUILD, "control", lambda config, ds, where, progress: built.append(where))
    prepare.prepare_all(c, progress=False)
    assert built == [ds.dir(tmp_path)]  # The next run builds it again.


def test_an_unwritable_data_dir_is_refused_before_building(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    c = config("smoke", mixture={"atari_pong": 1.0}, dir=str(blocker / "data"))
    with pytest.raises(cli.UsageError, match=r"Data directory .* cannot be created .*GATO_DATA_DIR"):
        prepare.prepare_all(c, progress=False)
