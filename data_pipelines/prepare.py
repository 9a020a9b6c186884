"""`make data EXP=NAME`: build every dataset an experiment's mixture names, idempotently.

`python -m data_pipelines.prepare --config experiments/NAME.py` is what `make data` runs; training
calls `prepare_all` first, so a fresh clone trains with one command. A dataset that already exists
with the same settings is left alone, so a second run does nothing.
"""
from __future__ import annotations

import logging
import os

import ml_collections

_LOG = logging.getLogger(__name__)

TEXT_SOURCES = ("text",)
CAPTION_SOURCES = ("captions",)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_dir(config: ml_collections.ConfigDict) -> str:
    """config.data.dir, else $GATO_DATA_DIR, else ./data in the repository (git-ignored); then the variant.

    A variant (`:smoke` sets 'smoke') keeps its own datasets beside the full ones: a smoke run must not
    rebuild the full data with smoke settings.
    """
    root = config.data.dir or os.environ.get("GATO_DATA_DIR") or os.path.join(REPO_ROOT, "data")
    return os.path.abspath(os.path.join(root, config.data.variant) if config.data.variant else root)


def control_tasks(config: ml_collections.ConfigDict) -> list[str]:
    return [name for name in config.data.mixture if name not in TEXT_SOURCES + CAPTION_SOURCES]


def needs_text_tokenizer(config: ml_collections.ConfigDict) -> bool:
    """Text and captions both need the SentencePiece model; control-only mixes do not."""
    return any(name in config.data.mixture for name in TEXT_SOURCES + CAPTION_SOURCES)


def prepare_all(config: ml_collections.ConfigDict) -> str:
    """Builds whatever the mixture needs under data_dir(config); returns that directory."""
    from data_pipelines import captions, episodes, text

    root = data_dir(config)
    os.makedirs(root, exist_ok=True)
    if needs_text_tokenizer(config):
        text.prepare_text(root, vocab_size=config.data.text_vocab_size)
    if any(name in config.data.mixture for name in CAPTION_SOURCES):
        captions.prepare_captions(root, **caption_settings(config))
    for name in control_tasks(config):
        episodes.prepare_task(
            name, root, episodes=config.data.episodes_per_task, max_steps=config.data.max_episode_steps,
            frame_size=config.data.frame_size, patch_size=config.model.patch_size, seed=config.seed,
            min_return_fraction=config.data.min_return_fraction, eval_episodes=config.data.reference_episodes,
            noise=recording_noise(config))
    _LOG.info("Data ready in %s", root)
    return root


def recording_noise(config: ml_collections.ConfigDict):
    """The DART noise of config.data.record_noise_* (labels stay the expert's)."""
    from data_pipelines import episodes

    d = config.data
    return episodes.RecordingNoise(float(d.record_noise_prob), int(d.record_noise_hold), float(d.record_noise_std))


def caption_settings(config: ml_collections.ConfigDict) -> dict:
    return dict(num_train=config.data.caption_train_examples, num_test=config.data.caption_test_examples,
                image_size=config.data.caption_image_size, seed=config.seed)


def main(argv: list[str]) -> None:
    del argv
    from gato_jax.logs import quiet_libraries

    quiet_libraries()
    print(prepare_all(_CONFIG.value))


if __name__ == "__main__":
    from absl import app
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
    app.run(main)
