"""control_mix: continuous control (MuJoCo InvertedPendulum, Reacher) plus the four Atari tasks.

Command:  make train EXP=control_mix && make eval EXP=control_mix   (smoke run: make train EXP=control_mix:smoke)
Machine:  2 CPU cores, no GPU (needs the `mujoco` extra, installed by `make install`).
Shows one model handling discrete and continuous actions, image and vector observations together.
Wall time: training 56 min 47 s (1850 steps of 16 x 256 tokens, median 1.44 s/step, data prepared; peak RSS
          5.0 GB), evaluation 11 min 53 s (50 episodes per task, sticky actions 0.25, 1000-step cap), 2026-12-02.
The games train as in atari_mix (configs.apply_atari_play: 40-px patches over three frames, 1850 steps, DAgger
rounds at steps 750 and 1300 with Breakout's wait). InvertedPendulum 0.13 with DAgger rounds of its own (the
model alone): at 0.07 and no rounds the pole fell after 43 steps (0.037). Reacher 0.07; Breakout gives up 0.06.
Results:  expert-normalised InvertedPendulum 0.740, Reacher 0.793, Freeway 0.688, Pong 0.649, Boxing 0.433,
          Breakout 0.043 (above random): continuous tasks met, games 2 of 4 over 0.5, so the issue's target is not
          met by this run. The run at commit ece7282 (games at atari_mix's weights, pendulum 0.07, no pendulum
          rounds) read 0.037 / 0.836 / 0.686 / 0.625 / 0.633 / 0.051. README "Results", `control_mix`.
"""
import ml_collections

from gato_jax import configs

GAMES = ("atari_pong", "atari_breakout", "atari_boxing", "atari_freeway")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = configs.cpu_experiment_config()
    c.data.mixture = ml_collections.ConfigDict(
        {"atari_pong": 0.21, "atari_breakout": 0.14, "atari_boxing": 0.34, "atari_freeway": 0.12,
         "control_pendulum": 0.12, "control_reacher": 0.07})
    configs.apply_atari_play(c, GAMES)
    c.dagger.tasks = (*GAMES, "control_pendulum")
    return configs.finalize(c, arg, "control_mix")
