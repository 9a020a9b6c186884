"""atari_mix: Pong, Breakout, Boxing and Freeway, plus text and captions, on one CPU-sized model.

Command:  make train EXP=atari_mix        (smoke run: make train EXP=atari_mix:smoke)
Hardware: 2 CPU cores.
Wall time and results: measured figures are in the README ("Results").
"""
import ml_collections

from gato_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = configs.base_config()
    c.seq_len = 256  # ~9 Atari timesteps of 27 tokens each.
    c.batch_size = 16
    c.num_train_steps = 3000
    c.checkpoint_every = 500
    c.eval_every = 250
    c.vocab.text_size = 1000
    c.data.text_vocab_size = 1000
    c.optimizer.peak_lr = 1e-3
    c.optimizer.warmup_steps = 200
    c.data.episodes_per_task = 40
    c.data.mixture = ml_collections.ConfigDict(
        {"atari_pong": 0.2, "atari_breakout": 0.2, "atari_boxing": 0.2, "atari_freeway": 0.2,
         "text": 0.1, "captions": 0.1})
    if arg == "smoke":
        c.model = configs.model_config("tiny")
        c.seq_len = 128
        c.batch_size = 8
        c.num_train_steps = 20
        c.checkpoint_every = 10
        c.eval_every = 10
        c.eval_batches = 1
        c.optimizer.warmup_steps = 5
        c.data.episodes_per_task = 3
        c.data.max_episode_steps = 200
        c.eval.episodes = 2
        c.eval.max_steps = 100
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r} for atari_mix; use ':smoke' or nothing.")
    c.lock()
    return c
