"""control_mix: continuous control (MuJoCo InvertedPendulum, Reacher) plus the four Atari tasks.

Command:  make train EXP=control_mix        (smoke run: make train EXP=control_mix:smoke)
Hardware: 2 CPU cores (needs the `mujoco` extra, installed by `make install`).
Shows one model handling discrete and continuous actions, image and vector observations together.
Wall time: training 48 min 59 s (3000 steps of 16 x 256 tokens), `make eval EXP=control_mix` 13 min 45 s
          (2026-11-30, 2 CPU cores, no GPU, JAX 0.10.2).
Results:  expert-normalised InvertedPendulum 1.00, Reacher 0.82 (continuous actions the likeliest bin;
          0.08 and 0.67 when sampled at temperature 1), Freeway 0.84, Breakout 0.01, Pong 0.01, Boxing -0.14.
          README "Results", `control_mix`.
"""
import ml_collections

from gato_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = configs.cpu_experiment_config()
    c.data.mixture = ml_collections.ConfigDict(
        {"control_pendulum": 0.25, "control_reacher": 0.25, "atari_pong": 0.125, "atari_breakout": 0.125,
         "atari_boxing": 0.125, "atari_freeway": 0.125})
    return configs.finalize(c, arg, "control_mix")
