"""atari_mix: Pong, Breakout, Boxing and Freeway, plus text and captions, on one CPU-sized model.

Command:  make train EXP=atari_mix && make eval EXP=atari_mix   (smoke run: make train EXP=atari_mix:smoke)
Machine:  2 CPU cores, no GPU (2026-12-01/02, JAX 0.10.2).
Wall time: training 55 min 55 s (1850 steps of 16 x 256 tokens, median 1.50 s/step, two DAgger rounds of
          ~5 min at steps 750 and 1300, data already prepared; peak RSS 5.5 GB), evaluation 10 min 17 s (50
          episodes per task, 25 envs, sticky actions 0.25, 1000-step cap, prompted).
Frames:   each 80x80 frame is 4 patches of 40x40 pixels (6 tokens per timestep instead of 27: a window of
          256 tokens holds 42 timesteps), and a patch's three channels hold the frame and the two before it.
Data:     experts that act on the frame, recorded with DART noise in the executed actions and the expert's
          clean action as every label; at steps 750 and 1300 the model plays 25 episodes of each game and
          the experts label every state it reached (DAgger; in Breakout and Boxing the expert's action is
          executed on half the steps, beta 0.5, except that on Breakout's ball-less screens the model acts
          alone for up to 8 steps first), half of each game's windows from then on.
Results (README "Results", charts in docs/): expert-normalised Pong 0.684, Freeway 0.622, Boxing 0.581,
          Breakout 0.055 (above random by ~6 standard errors): the 50%-of-expert target on 3 of 4 games is
          met by this one run. Held-out action accuracy above the majority and repeat-last baselines on all
          four games (0.91, 0.96, 0.79, 0.79); captions 0.940 on held-out scenes of seen colour-shape pairs,
          0.179 on unseen pairs, 0.955 on digits; text perplexity 66 against a unigram model's 320. With
          2000 steps (rounds at 800 and 1400) the same mixture read 0.602 / 0.696 / 0.555 / 0.054 but took
          61 min 35 s on a slow stretch; with Boxing at 0.25 of the mixture, 0.621 / 0.701 / 0.498 / 0.034.
          Breakout's model serves but does not return the ball (agreement on its own states 0.11).

Mixture: Boxing the most (0.30: the game nearest the bar; 0.22 and 0.25 read 0.46 and 0.498), Pong and
Breakout 0.21, Freeway the least of the games (0.14: the best-imitated), captions 9% (the seen-pairs
target), text 5%.
"""
import ml_collections

from gato_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = configs.cpu_experiment_config()
    c.data.mixture = ml_collections.ConfigDict(
        {"atari_pong": 0.21, "atari_breakout": 0.21, "atari_boxing": 0.3, "atari_freeway": 0.14,
         "text": 0.05, "captions": 0.09})
    configs.apply_atari_play(c, ("atari_pong", "atari_breakout", "atari_boxing", "atari_freeway"))
    return configs.finalize(c, arg, "atari_mix")
