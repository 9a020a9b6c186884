"""generalist: every task the project generates (Atari, continuous control), text and captions.

Command:  make train EXP=generalist        (smoke run: make train EXP=generalist:smoke)
Hardware: 2 CPU cores for the default size; `--config.model.preset` style sizes via the `:gato_79m`
argument (`make train EXP=generalist:gato_79m`), meant for a GPU or TPU slice with a 1024 context.
"""
import ml_collections

from gato_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = configs.cpu_experiment_config()
    c.data.mixture = ml_collections.ConfigDict(
        {"atari_pong": 0.125, "atari_breakout": 0.125, "atari_boxing": 0.125, "atari_freeway": 0.125,
         "control_pendulum": 0.125, "control_reacher": 0.125, "text": 0.125, "captions": 0.125})
    if arg in configs.MODEL_PRESETS and arg.startswith("gato_"):
        c.model = configs.model_config(arg)
        c.seq_len, c.batch_size = 1024, 512  # [P]
        c.optimizer.warmup_steps, c.optimizer.peak_lr = 15_000, 1e-4  # [A]
        c.num_train_steps = 1_000_000  # [P]
        c.mesh.data, c.mesh.fsdp = 1, -1  # Shard parameters over every device.
        c.vocab.text_size = c.data.text_vocab_size = 23_000  # The Shakespeare corpus holds < 32000 pieces.
        arg = None
    return configs.finalize(c, arg, "generalist")
