"""prismer: captions and visual questions on the procedural scenes, read through frozen experts (issue 14).

Command:  make train EXP=prismer:lm && \
          make train EXP=prismer ARGS=--config.train.warm_start.workdir=$PWD/runs/prismer_lm && make eval EXP=prismer
          (smoke run: make train EXP=prismer:smoke; the end-to-end baseline on the same data, width and
          steps: make train EXP=prismer:gato). Without the warm start the decoder stays frozen at random
          initialisation and learns little (150 steps: captions 0.06).
Machine:  2 CPU cores, no GPU (2026-11-30, JAX 0.10.2), shared with other training jobs.
Model:    `model.kind="prismer"` (`gato_jax.model.prismer`): a 4-block, width-128 Gato decoder reads the
          images through gated cross-attention (zero-initialised gates, one layer per 2 blocks) from a
          vision encoder: the image's RGB patch embeddings plus 4 resampler tokens per frozen expert:
          Sobel edges, palette segments and the learned per-pixel shape classifier (trained once on seen
          colour-shape pairs by `make data`, dataset "shape_expert"). The decoder (token table, local
          positions, blocks, final norm) is warm-started from `:lm` (the same examples, image positions
          deleted) and frozen: 450,274 of 1,706,118 parameters train (0.264).
Wall time: `:lm` 3 min (200 steps), the Prismer run 4-5 min (250 steps, ~1.1 s/step), `:gato` 2.5-3 min.
Results (README "Prismer", N = 4000 scenes and 4000 questions, 250 steps): captions (greedy, exact match)
          1.00 on held-out scenes of seen colour-shape pairs and 1.00 on never-seen pairs (end-to-end Gato:
          0.94 and 0.02); questions 0.857 (Gato 0.886). At 250 and 1000 examples: never-seen pairs 0.32 and
          0.80 (Gato 0.02 and 0.02).
"""
import ml_collections

from data_pipelines.captions import COLOURS
from gato_jax import configs

# What a text-only run of this width trains; frozen here, and what a warm start reads.
DECODER = ("^embed/token", "^embed/local_pos", "^blocks/", "^final_norm/")
WIDTH = dict(num_layers=4, d_model=128, mlp_dim=512, num_heads=4, head_dim=32)
# ":gato" is the end-to-end baseline (same data, width and steps); ":lm" the text-only run of the decoder
# that warm-starts a Prismer run (the same examples with every image position deleted).
ARGS = ("smoke", "gato", "gato_smoke", "lm")


def model_fields(c: ml_collections.ConfigDict, kind: str) -> None:
    """Decoder width, then (kind == "prismer") the vision encoder, its experts and the frozen decoder."""
    c.model.update(WIDTH)
    c.model.kind = kind
    if kind != "prismer":
        return
    p = c.model.prismer
    p.experts = ("edges", "segments", "shapes")
    p.palette = ((0, 0, 0),) + tuple(COLOURS.values())  # Black background first, then the six scene colours.
    p.image_size = c.data.caption_image_size
    p.max_images = 16  # A 128-token row holds at most ~13 images (a caption is ~14 tokens, 4 of them patches).
    p.num_queries = 4
    p.cross_attention_every = 2
    p.cross_attention_mlp = False
    c.train.frozen = DECODER
    c.optimizer.peak_lr = 3e-3  # Only the new parts train (Flamingo too trains them faster than a decoder).
    c.train.warm_start.params = DECODER  # Used only when train.warm_start.workdir is set.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg and arg not in ARGS:
        raise ValueError(f"Unknown config argument {arg!r} for prismer; use one of {[f':{a}' for a in ARGS]} "
                         "or nothing.")
    c = configs.cpu_experiment_config()
    c.data.mixture = ml_collections.ConfigDict({"captions": 0.5, "questions": 0.5})
    c.data.caption_digits = False  # Scenes only: every example has an answer the experts can see.
    c.data.caption_train_examples = 4000  # Scenes for caption training (README table: 250, 1000, 4000).
    c.data.document_train_examples = 4000  # Questions (and, built beside them, documents and few-shot).
    c.seq_len = 128
    c.batch_size = 16
    c.num_train_steps = 250  # What the README table measured (longer runs: --config.num_train_steps=N).
    c.checkpoint_every = c.eval_every = 250
    c.log_every = 50
    c.optimizer.warmup_steps = 25
    c.eval.caption_examples = 200  # Held-out captions: half seen colour-shape pairs, half never seen.
    c.eval.question_examples = 280  # Held-out questions: 40 of each of the 7 types.
    if arg and arg.endswith("smoke"):
        configs.apply_smoke(c)
        c.seq_len = 128
    c.model.preset = "custom"  # Width set below (WIDTH), not a named preset.
    model_fields(c, "gato" if arg and arg.startswith(("gato", "lm")) else "prismer")
    if arg == "lm":
        c.data.drop_images = True
        c.num_train_steps = 200
        c.optimizer.warmup_steps = 20
        c.optimizer.peak_lr = 3e-3
    if arg and arg.endswith("smoke"):
        c.model.update(dict(num_layers=2, d_model=64, mlp_dim=128, num_heads=4, head_dim=16))
        c.model.prismer.max_images = 12
    return configs.finalize(c, None, "prismer")
