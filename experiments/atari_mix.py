"""atari_mix: Pong, Breakout, Boxing and Freeway, plus text and captions, on one CPU-sized model.

Command:  make train EXP=atari_mix        (smoke run: make train EXP=atari_mix:smoke)
Hardware: 2 CPU cores.
Wall time and results: see the README ("Results"); `make eval EXP=atari_mix` reproduces them.
"""
import ml_collections

from gato_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = configs.cpu_experiment_config()
    c.data.mixture = ml_collections.ConfigDict(
        {"atari_pong": 0.2, "atari_breakout": 0.3, "atari_boxing": 0.25, "atari_freeway": 0.05,
         "text": 0.1, "captions": 0.1})
    return configs.finalize(c, arg, "atari_mix")
