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
    # Each 80x80 frame is 4 patches of 40x40 (an 8x8-stride stem, so each patch's ResNet block sees a 5x5
    # grid): 6 tokens per timestep instead of 27, so a 256-token window holds 42 timesteps and a step
    # trains on ~4.5x as many actions (~3x per second). Each patch holds the frame and the two before it.
    c.model.patch_size, c.model.patch_stem_stride = 40, 8
    c.data.caption_image_size = 80  # A multiple of the patch and of the scene generator's 16.
    c.data.frame_history = 3
    # One sparse cap each for the patch ResNet (batches hold 56-61% image positions) and two for the logits
    # (17-26% targets): reverse mode through the cap switch fills every branch's residuals but the one taken
    # with zeros, [cap, 4800]-sized at 40-px patches, so the base config's three caps cost ~20% of a step.
    c.train.image_position_caps, c.train.loss_position_caps = (0.625,), (0.25, 0.3125)
    c.num_train_steps = 1850
    c.checkpoint_every = 200  # All 10 kept (max_checkpoints_to_keep): the held-out curve reads them.
    # Two DAgger rounds (gato_jax/dagger.py): at steps 750 and 1300 the model plays 25 episodes of each game,
    # the experts label every state it reached, and from then on half of each game's windows come from the
    # rounds so far. In Breakout and Boxing the expert co-drives half the rounds' steps (beta): alone,
    # Breakout's model rarely served and 81% of its round was FIRE labels on ball-less screens. Pong learns
    # from its own misses: beta 0.5 there gave 0.17 against 0.33 without.
    c.dagger.steps = (750, 1300)
    c.dagger.beta, c.dagger.mixed_tasks = 0.5, ("atari_breakout", "atari_boxing")
    # ... but on Breakout's ball-less screens (the expert's label FIRE) the model acts alone for up to 8 steps
    # in a row before the expert's share resumes: with the expert serving within ~2 steps, FIRE was 2.5% of
    # the rounds' labels and the model still seldom served.
    c.dagger.model_first_labels = ml_collections.ConfigDict({"atari_breakout": (1,)})  # Breakout's FIRE.
    c.dagger.model_first_steps = 8
    return configs.finalize(c, arg, "atari_mix")
