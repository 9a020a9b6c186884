"""control_mix: continuous control (MuJoCo InvertedPendulum, Reacher) plus the four Atari tasks.

Command:  make train EXP=control_mix        (smoke run: make train EXP=control_mix:smoke)
Hardware: 2 CPU cores (needs the `mujoco` extra, installed by `make install`).
Shows one model handling discrete and continuous actions, image and vector observations together.
"""
import ml_collections

from gato_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = configs.cpu_experiment_config()
    c.data.mixture = ml_collections.ConfigDict(
        {"control_pendulum": 0.25, "control_reacher": 0.25, "atari_pong": 0.125, "atari_breakout": 0.125,
         "atari_boxing": 0.125, "atari_freeway": 0.125})
    return configs.finalize(c, arg, "control_mix")
