"""`make data EXP=NAME`: build every dataset an experiment's mixture names, idempotently.

`python -m data_pipelines.prepare --config experiments/NAME.py` is what `make data` runs; training calls
`prepare_all` first, so a fresh clone trains with one command.

Datasets are keyed by their settings: each lives in `<root>/<name>-<key>/`, the key a short hash of
everything that determines its contents (`Dataset.settings`), so datasets made with other settings (a
`:smoke` run's, or `--config.data.episodes_per_task=200`) live side by side and never replace each
other; a second run with the same settings does nothing. Each is written into a temporary folder and
renamed into place when whole, so an interrupted `make data` leaves nothing that reads as complete.
Datasets of the earlier layout (`<root>/<name>/`, `<root>/smoke/<name>/`) are moved to their keyed
place when their recorded settings match, never rebuilt.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from data_pipelines import captions, corpus, documents, episodes, shape_masks, tasks
from gato_jax import cli
from gato_jax.errors import DataError, UsageError
from gato_jax.logs import quiet_libraries
from gato_jax.perception import shape_expert

_LOG = logging.getLogger(__name__)

TEXT_SOURCES = ("text",)
CAPTION_SOURCES = ("captions",)
DOCUMENT_SOURCES = documents.KINDS  # "documents", "questions", "fewshot": one dataset, three sources.
DOCUMENT_LINES = 5000  # Lines of the documents' words added to the tokenizer's corpus when they are mixed in.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGACY_VARIANTS = ("", "smoke")  # Subfolders the earlier layout kept datasets in.
MAKE_DATA = episodes.MAKE_DATA
SHAPE_EXPERT = "shape_expert"  # The learned frozen expert of model.kind="prismer" (trained once, here).


def data_root(config: ml_collections.ConfigDict) -> Path:
    """config.data.dir, else $GATO_DATA_DIR, else ./data in the repository (git-ignored)."""
    return Path(config.data.dir or os.environ.get("GATO_DATA_DIR") or os.path.join(REPO_ROOT, "data")).absolute()


def known_sources() -> list[str]:
    """Every name a mixture may use: the control tasks, text, captions and the interleaved documents."""
    return sorted([*tasks.task_names(), *TEXT_SOURCES, *CAPTION_SOURCES, *DOCUMENT_SOURCES])


def check_config(config: ml_collections.ConfigDict) -> None:
    """`cli.check_config` with the sources this package knows, then that a training window holds whole
    timesteps of every control task (with room for a prompt): UsageError naming the fix otherwise."""
    cli.check_config(config, known_sources())
    for name in control_tasks(config):
        spec = tasks.task_spec_for(config, name)
        if config.seq_len < 2 * spec.tokens_per_timestep:
            raise UsageError(f"config.seq_len={config.seq_len} holds fewer than two timesteps of {name} "
                             f"({spec.tokens_per_timestep} tokens each); set --config.seq_len to at least "
                             f"{2 * spec.tokens_per_timestep}.")
    check_prismer_images(config)


def check_prismer_images(config: ml_collections.ConfigDict) -> None:
    """A PrismerGato reassembles every image at `model.prismer.image_size`: the mixture's images must have it."""
    if config.model.get("kind", "gato") != "prismer":
        return
    sizes = {"data.frame_size": config.data.frame_size} if control_tasks(config) else {}
    if any(name in config.data.mixture for name in CAPTION_SOURCES + DOCUMENT_SOURCES):
        sizes["data.caption_image_size"] = config.data.caption_image_size
    wrong = {k: v for k, v in sizes.items() if v != config.model.prismer.image_size}
    if wrong:
        raise UsageError(f"config.model.prismer.image_size={config.model.prismer.image_size} but the mixture's images "
                         f"are {wrong}; set --config.model.prismer.image_size to match (one size per run).")


def control_tasks(config: ml_collections.ConfigDict) -> list[str]:
    return [name for name in config.data.mixture if name not in TEXT_SOURCES + CAPTION_SOURCES + DOCUMENT_SOURCES]


def needs_text_tokenizer(config: ml_collections.ConfigDict) -> bool:
    """Text, captions and documents need the SentencePiece model; control-only mixes do not."""
    return any(name in config.data.mixture for name in TEXT_SOURCES + CAPTION_SOURCES + DOCUMENT_SOURCES)


def mixes_documents(config: ml_collections.ConfigDict) -> bool:
    return any(name in config.data.mixture for name in DOCUMENT_SOURCES)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset an experiment needs, and everything that determines its contents."""

    name: str  # A control task, "captions", "text" or "documents".
    settings: dict[str, Any]  # Hashed into the key.
    files: tuple[str, ...] = ()  # Paths below its dir that a finished dataset has (not part of the key).

    @property
    def key(self) -> str:
        """8 hex digits of the settings' hash: the same settings, the same folder."""
        blob = json.dumps(self.settings, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:8]

    def dir(self, root: str | os.PathLike) -> Path:
        """`<root>/<name>-<key>`: the data_dir its module's functions read and write below."""
        return Path(root) / f"{self.name}-{self.key}"

    def is_complete(self, root: str | os.PathLike) -> bool:
        """Made with these settings, and every file a finished dataset has is there."""
        where = self.dir(root)
        return _matches(self, where) and all((where / f).exists() for f in self.files)

    @property
    def kind(self) -> str:
        return self.name if self.name in (*TEXT_SOURCES, *CAPTION_SOURCES, "documents", SHAPE_EXPERT) else "control"


def datasets(config: ml_collections.ConfigDict) -> dict[str, Dataset]:
    """The datasets the experiment's mixture needs, by name (text also for captions: its tokenizer)."""
    d = config.data
    out = {}
    if needs_text_tokenizer(config):
        model = corpus.text_paths("", d.text_vocab_size)["model"]  # One corpus, a model per vocabulary size.
        settings = {"corpus": corpus.SHAKESPEARE, "test_fraction": corpus.TEST_FRACTION,
                    "caption_lines": corpus.CAPTION_LINES}
        if mixes_documents(config):  # Recorded only then, so the other experiments keep their tokenizer.
            settings["document_lines"] = DOCUMENT_LINES
            if "fewshot" in d.mixture:  # Its labels one token each; other experiments keep their tokenizer.
                settings["whole_words"] = list(documents.NONSENSE_WORDS)
        out["text"] = Dataset("text", settings, ("text/train.txt", str(model)))
    if any(name in d.mixture for name in CAPTION_SOURCES):
        info = captions.captions_path("") / "dataset_info.json"
        out["captions"] = Dataset("captions", caption_settings(config), (str(info),))
    if mixes_documents(config):
        info = documents.documents_path("") / "dataset_info.json"
        out["documents"] = Dataset("documents", document_settings(config), (str(info),))
    if needs_shape_expert(config):
        out[SHAPE_EXPERT] = shape_expert_dataset(config)
    for name in control_tasks(config):
        info = episodes.dataset_dir("", name) / "dataset_info.json"
        out[name] = Dataset(name, episodes.settings(
            name, episodes=d.episodes_per_task, max_steps=d.max_episode_steps, frame_size=d.frame_size,
            seed=config.seed, min_return_fraction=d.min_return_fraction, eval_episodes=d.reference_episodes,
            patch_size=config.model.patch_size, noise=recording_noise(config),
            frame_filter=d.get("frame_filter", "area")), (str(info),))
    return out


def needs_shape_expert(config: ml_collections.ConfigDict) -> bool:
    """A Prismer model whose experts include the learned 'shapes' one, reading it from the keyed dataset (no
    `model.prismer.shape_expert_dir` given, or the one `use_prepared_experts` set)."""
    m = config.model
    if m.get("kind", "gato") != "prismer" or "shapes" not in tuple(m.prismer.experts):
        return False
    return str(m.prismer.shape_expert_dir) in ("", str(shape_expert_dataset(config).dir(data_root(config))))


def shape_expert_dataset(config: ml_collections.ConfigDict) -> Dataset:
    return Dataset(SHAPE_EXPERT, shape_expert_settings(config), (shape_expert.INFO_FILE,))


def shape_expert_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What `shape_masks.prepare_shape_expert` trains with: scenes at the model's image size, seen pairs only."""
    return {"image_size": int(config.model.prismer.image_size), "num_train": 2000, "num_heldout": 200,
            "steps": 400, "seed": int(config.seed)}


def use_prepared_experts(config: ml_collections.ConfigDict) -> None:
    """Points `model.prismer.shape_expert_dir` at the keyed "shape_expert" dataset when the config needs it
    and names none (before the model is built and before a checkpoint's config is compared with it)."""
    if needs_shape_expert(config):
        config.model.prismer.shape_expert_dir = str(shape_expert_dataset(config).dir(data_root(config)))


def dataset_dirs(config: ml_collections.ConfigDict) -> dict[str, Path]:
    """Where each dataset of the experiment lives (built or not)."""
    root = data_root(config)
    return {name: ds.dir(root) for name, ds in datasets(config).items()}


def check_prepared(config: ml_collections.ConfigDict) -> dict[str, Path]:
    """The experiment's dataset dirs; DataError naming the command when one is missing or half-written."""
    root = data_root(config)
    for name, ds in datasets(config).items():
        if not ds.is_complete(root):
            state = "is half-written" if ds.dir(root).exists() else "is missing"
            raise DataError(f"Dataset {name!r} for this config's settings {state} at {ds.dir(root)}; build it with "
                            f"`{MAKE_DATA}` (or let `make train` build it).")
    return dataset_dirs(config)


def prepare_all(config: ml_collections.ConfigDict, progress: bool = True) -> dict[str, Path]:
    """Builds whatever the mixture needs (each dataset under its keyed dir); returns the dirs by name."""
    root = data_root(config)
    wanted = datasets(config)
    adopt_legacy(root, wanted.values())
    missing = [ds for ds in wanted.values() if not ds.is_complete(root)]
    if missing:
        cli.check_writable_dir(str(root), "Data directory", "set GATO_DATA_DIR or --config.data.dir to a folder you "
                               "can write")
    for ds in missing:
        _BUILD[ds.kind](config, ds, ds.dir(root), progress)
    _LOG.info("Data ready in %s", root)
    return {name: ds.dir(root) for name, ds in wanted.items()}


def recording_noise(config: ml_collections.ConfigDict) -> episodes.RecordingNoise:
    """The DART noise of config.data.record_noise_* (labels stay the expert's)."""
    d = config.data
    return episodes.RecordingNoise(float(d.record_noise_prob), int(d.record_noise_hold), float(d.record_noise_std))


def caption_settings(config: ml_collections.ConfigDict) -> dict:
    settings = dict(num_train=int(config.data.caption_train_examples),
                    num_test=int(config.data.caption_test_examples),
                    image_size=int(config.data.caption_image_size), seed=int(config.seed))
    if mixes_documents(config):  # Same scenes as the documents: split image space the same way (no leak).
        settings["split_by_hash"] = True
    if not config.data.get("caption_digits", True):  # Recorded only when off: other datasets keep their key.
        settings["digits"] = False
    return settings


def document_settings(config: ml_collections.ConfigDict) -> dict:
    return dict(num_train=int(config.data.document_train_examples),
                num_test=int(config.data.document_test_examples),
                image_size=int(config.data.caption_image_size), seed=int(config.seed), shots=documents.SHOTS)


# ---------------------------------------------------------------------------------------------------------
# Building and recognising each kind.


def _build_text(config, ds: Dataset, where: Path, progress: bool) -> None:
    corpus.prepare_text(where, vocab_size=config.data.text_vocab_size, progress=progress,
                        test_fraction=ds.settings["test_fraction"],
                        document_lines=ds.settings.get("document_lines", 0),
                        whole_words=ds.settings.get("whole_words", ()))


def _build_captions(config, ds: Dataset, where: Path, progress: bool) -> None:
    captions.prepare_captions(where, **ds.settings, progress=progress)


def _build_documents(config, ds: Dataset, where: Path, progress: bool) -> None:
    documents.prepare_documents(where, **ds.settings, progress=progress)


def _build_control(config, ds: Dataset, where: Path, progress: bool) -> None:
    episodes.prepare_task(ds.name, where, episodes=config.data.episodes_per_task,
                          max_steps=config.data.max_episode_steps, frame_size=config.data.frame_size,
                          patch_size=config.model.patch_size, seed=config.seed,
                          min_return_fraction=config.data.min_return_fraction,
                          eval_episodes=config.data.reference_episodes, noise=recording_noise(config),
                          frame_filter=config.data.get("frame_filter", "area"), progress=progress)


def _build_shape_expert(config, ds: Dataset, where: Path, progress: bool) -> None:
    del config, progress
    info = shape_masks.prepare_shape_expert(where, **ds.settings)
    _LOG.info("Shape expert: held-out object-pixel accuracy %.3f (never-seen pairs %.3f) in %s",
              info["heldout"]["object_pixel_accuracy"], info["heldout_novel"]["object_pixel_accuracy"], where)


_BUILD: dict[str, Callable[..., None]] = {"text": _build_text, "captions": _build_captions,
                                          "documents": _build_documents, "control": _build_control,
                                          SHAPE_EXPERT: _build_shape_expert}


def _text_settings(where: Path) -> dict | None:
    try:
        meta = json.loads((where / "text" / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return {"test_fraction": meta.get("test_fraction")}


def _caption_settings(where: Path) -> dict | None:
    path = captions.captions_path(where)
    return captions.stored_params(path)


def _control_settings(where: Path, name: str) -> dict | None:
    try:
        return json.loads((episodes.dataset_dir(where, name) / "metadata.json").read_text()).get("settings")
    except (OSError, ValueError):
        return None


def _matches(ds: Dataset, where: Path) -> bool:
    """Whether the dataset below `where` was made with `ds.settings` (compared on the keys it records)."""
    stored = {"text": lambda: _text_settings(where), "captions": lambda: _caption_settings(where),
              "documents": lambda: captions.stored_params(documents.documents_path(where)),
              "control": lambda: _control_settings(where, ds.name),
              SHAPE_EXPERT: lambda: shape_masks.stored_settings(where)}[ds.kind]()
    if stored is None:
        return False
    if ds.kind in ("control", SHAPE_EXPERT):
        return stored == ds.settings
    return all(stored.get(k) == v for k, v in ds.settings.items() if k in stored)


def adopt_legacy(root: Path, wanted: Sequence[Dataset] | Any) -> list[Path]:
    """Moves datasets of the earlier, unkeyed layout (`<root>/<name>`, `<root>/smoke/<name>`) whose recorded
    settings match a wanted dataset into its keyed dir (a rename: nothing is rebuilt or copied)."""
    moved = []
    for ds in wanted:
        target = ds.dir(root)
        if target.exists():
            continue
        for variant in LEGACY_VARIANTS:
            old_parent = root / variant if variant else root
            old = old_parent / ds.name
            if old.is_dir() and _matches(ds, old_parent):
                target.mkdir(parents=True)
                os.rename(old, target / ds.name)
                _LOG.warning("Moved %s to %s (datasets are now keyed by their settings).", old, target / ds.name)
                moved.append(target)
                break
    return moved


# ---------------------------------------------------------------------------------------------------------
# `make data`.


def _define(fv) -> None:
    del fv  # Only --config and its overrides.


def _main(argv: list[str]) -> int:
    parsed = cli.parse(argv, _define, prog="python -m data_pipelines.prepare")
    config = parsed.config
    check_config(config)
    quiet_libraries()
    dirs = prepare_all(config)
    for name, path in dirs.items():
        print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`make data`: returns the exit status (one-line errors, see `gato_jax.cli`)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Dataset", "check_config", "check_prepared", "data_root", "dataset_dirs", "datasets", "known_sources",
           "prepare_all", "use_prepared_experts"]
