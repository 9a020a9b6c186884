"""atari_mix: Pong, Breakout, Boxing and Freeway, plus text and captions, on one CPU-sized model.

Command:  make train EXP=atari_mix && make eval EXP=atari_mix   (smoke run: make train EXP=atari_mix:smoke)
Machine:  2 CPU cores, no GPU (2026-11-26, JAX 0.10.2).
Wall time: training 54 min 26 s (1000 steps of 16 x 256 tokens, 3.2 s/step; data already prepared),
          evaluation 36 min (50 episodes per task, sticky actions 0.25, 1000-step cap, prompted).
Results (README "Results", chart in docs/atari_mix_scores.png): expert-normalised Freeway 1.04,
          Breakout 0.03 (2.22 vs random 1.25), Boxing -0.15, Pong -0.05; caption exact match 0.979 on
          held-out scenes of seen colour-shape pairs, 0.051 on unseen pairs; held-out text perplexity 64
          against a unigram model's 320. The 50%-of-expert target on 3 of 4 games is not met; the README
          says what limits each game.

Mixture: Freeway's expert always presses UP, learnt by the first checkpoint (step 250), so it gets 5% and the
games the model is still learning get the rest (Breakout 30%, Boxing 25%, Pong 20%).
"""
import ml_collections

from gato_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = configs.cpu_experiment_config()
    c.data.mixture = ml_collections.ConfigDict(
        {"atari_pong": 0.2, "atari_breakout": 0.3, "atari_boxing": 0.25, "atari_freeway": 0.05,
         "text": 0.1, "captions": 0.1})
    return configs.finalize(c, arg, "atari_mix")
