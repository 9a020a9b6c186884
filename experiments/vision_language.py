"""vision_language: KOSMOS-1-style interleaved documents, visual questions and few-shot episodes with
fresh nonsense labels, plus captions and text, on one CPU-sized model (issue 13).

Command:  make train EXP=vision_language && make eval EXP=vision_language
          (smoke run: make train EXP=vision_language:smoke)
Machine:  2 CPU cores, no GPU.
Images:   48x48 scenes, 9 patches each, so the perceiver resampler (`model.image_encoder="resampler"`,
          K = 4 tokens per image) has something to compress; README "Vision and language" compares
          causal vs semi-causal attention and patches vs resampler at equal steps.
Wall time: training 39 min 7 s (1000 steps of 32 x 128 tokens; 2 cores shared with other jobs: median 1846
          tokens/s, ~3700 with less contention), evaluation 29 s (2026-11-30, JAX 0.10.2).
Results:  held-out visual questions 0.889 (chance 0.345; target 0.8 met); few-shot episodes with fresh
          nonsense labels 0.475 / 0.505 / 0.465 / 0.485 at 0 / 1 / 2 / 4 shots (chance 0.5: no in-context
          learning yet, target +0.3 not met); captions 0.910 on seen pairs, 0.134 on novel pairs; text
          perplexity 53.8. README "Vision and language" (report.json `vision_language` section).
"""
import ml_collections

from gato_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = configs.cpu_experiment_config()
    c.data.mixture = ml_collections.ConfigDict(
        {"questions": 0.35, "fewshot": 0.3, "documents": 0.15, "captions": 0.1, "text": 0.1})
    c.seq_len = 128  # Longest example (a 48-px document) is ~100 tokens; examples pack whole.
    c.batch_size = 32  # 4096 tokens per step, as atari_mix's 16 x 256.
    c.num_train_steps = 1000  # ~1.1 s/step on 2 idle cores (~20 minutes); more under contention.
    c.checkpoint_every = 250
    c.data.caption_image_size = 48
    c.data.fewshot_label_loss = True  # Every demonstration's word is a next-token target too.
    c.model.attention = "semi_causal"
    c.model.semi_causal_spans = "images"
    c.model.image_encoder = "patches"
    c.model.resampler_tokens = 4
    return configs.finalize(c, arg, "vision_language")
