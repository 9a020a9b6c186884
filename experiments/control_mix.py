"""control_mix: continuous control (MuJoCo InvertedPendulum, Reacher) plus the four Atari tasks.

Command:  make train EXP=control_mix && make eval EXP=control_mix   (smoke run: make train EXP=control_mix:smoke)
Machine:  2 CPU cores, no GPU (needs the `mujoco` extra, installed by `make install`).
Shows one model handling discrete and continuous actions, image and vector observations together.
The games train as in atari_mix (configs.apply_atari_play: 40-px patches over three frames, 1850 steps,
DAgger rounds at steps 750 and 1300 for the four games) and keep atari_mix's game weights; the 14% that
atari_mix gives text and captions goes to InvertedPendulum and Reacher here (7% each: vector observations,
DART-recorded, no DAgger rounds: the previous layout's run reached 1.00 / 0.82 on those alone).
Results:  README "Results", `control_mix`.
"""
import ml_collections

from gato_jax import configs

GAMES = ("atari_pong", "atari_breakout", "atari_boxing", "atari_freeway")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = configs.cpu_experiment_config()
    c.data.mixture = ml_collections.ConfigDict(
        {"atari_pong": 0.21, "atari_breakout": 0.21, "atari_boxing": 0.3, "atari_freeway": 0.14,
         "control_pendulum": 0.07, "control_reacher": 0.07})
    configs.apply_atari_play(c, GAMES)
    return configs.finalize(c, arg, "control_mix")
