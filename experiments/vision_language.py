"""vision_language: KOSMOS-1-style interleaved documents, visual questions and few-shot episodes with
fresh nonsense labels, plus captions and text, on one CPU-sized model (issue 13).

Command:  make train EXP=vision_language && make eval EXP=vision_language
          (smoke run: make train EXP=vision_language:smoke)
Machine:  2 CPU cores, no GPU.
Images:   48x48 scenes, 9 patches each, so the perceiver resampler (`model.image_encoder="resampler"`,
          K = 4 tokens per image) has something to compress; README "Vision and language" compares
          causal vs semi-causal attention and patches vs resampler at equal steps.
Wall time: training 45 min 41 s (2500 steps of 32 x 128 tokens, 1.1 s/step, nothing else running),
          evaluation 19 s (2026-11-30, JAX 0.10.2).
Results:  held-out visual questions 0.929 (chance 0.345; target 0.8 met); few-shot episodes with fresh
          nonsense labels 0.455 / 0.470 / 0.480 / 0.465 at 0 / 1 / 2 / 4 shots (chance 0.5: no in-context
          learning yet, target +0.3 not met; the demonstrations' words cost ln 2 at every position); captions
          1.000 on seen pairs, 0.343 on novel pairs; text perplexity 46.6. README "Vision and language"
          (report.json `vision_language` section); why few-shot stalls (a lookup through the `</image>`
          separator does not form, even for pixel-identical images): its "Where the lookup stalls".
          With one token per image (resampler K = 1), smeared keys and the text-key curriculum, a small
          model's held-out few-shot accuracy first rises with the demonstrations (0.52 at 0 shots, 0.64 at
          4, step 5000; +0.05 to +0.10 in a replicate with another seed; not yet the target), most of it on
          episodes whose words name the shapes' position: README "The curriculum for longer, and one
          token per image".
"""
import ml_collections

from gato_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = configs.cpu_experiment_config()
    c.data.mixture = ml_collections.ConfigDict(
        {"fewshot": 0.5, "questions": 0.25, "documents": 0.1, "captions": 0.1, "text": 0.05})
    c.seq_len = 128  # Longest example (a 48-px document) is ~100 tokens; examples pack whole.
    c.batch_size = 32  # 4096 tokens per step, as atari_mix's 16 x 256.
    c.num_train_steps = 2500  # ~1.2 s/step on 2 idle cores: ~50 minutes, inside the 60.
    c.checkpoint_every = 250
    c.max_checkpoints_to_keep = 10  # Every 250 steps kept: the held-out learning curve is read off them.
    c.data.caption_image_size = 48
    c.data.fewshot_label_loss = True  # Every demonstration's word is a next-token target too.
    c.data.fewshot_train_max_shots = 8  # Fresh training episodes of 1-8 demonstrations (~115 tokens at 8).
    c.model.attention = "semi_causal"
    c.model.semi_causal_spans = "images"
    c.model.image_encoder = "patches"
    c.model.resampler_tokens = 4
    return configs.finalize(c, arg, "vision_language")
