"""Entry point: `python -m gato_jax.sample --workdir DIR (--prompt TEXT | --image FILE) [options]`.

Continues a text prompt, or captions an image, with nothing but the checkpoint: the model, the
vocabulary and the SentencePiece model all come from it. Sampling is restricted to text ids and
`<eos>`, stops at `<eos>`, and runs over the KV cache (one prefill chunk, then one jitted call per
token). Captions are sampled at temperature 0.9 as in the paper, text at 1.0, unless --temperature
or --greedy says otherwise. Errors (no checkpoint, another vocabulary, a checkpoint without a text
tokenizer, an unreadable image) end with one line.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import jax
import numpy as np

CAPTION_TEMPERATURE, TEXT_TEMPERATURE = 0.9, 1.0  # [P] for captions; plain sampling for text.


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gato_jax.sample", description=__doc__.split("\n\n")[1])
    p.add_argument("--workdir", required=True, help="Run directory (or its checkpoints/ directory).")
    p.add_argument("--step", type=int, default=None, help="Checkpoint step (default: the latest).")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="Text to continue ('' starts from <bos>).")
    what.add_argument("--image", help="Image file to caption (resized to config.data.caption_image_size).")
    p.add_argument("--temperature", type=float, default=None, help="Default 0.9 for captions, 1.0 for text.")
    p.add_argument("--top_k", type=int, default=0, help="Sample from the k most likely ids (0 = all).")
    p.add_argument("--top_p", type=float, default=1.0, help="Nucleus sampling mass (1 = all).")
    p.add_argument("--max_tokens", type=int, default=64, help="Most new tokens.")
    p.add_argument("--seed", type=int, default=0, help="RNG seed.")
    p.add_argument("--greedy", action="store_true", help="Argmax instead of sampling.")
    args = p.parse_args(argv)
    if args.max_tokens <= 0 or args.top_k < 0 or not 0 < args.top_p <= 1:
        p.error("--max_tokens must be > 0, --top_k >= 0 and --top_p in (0, 1].")
    if args.image is not None and not os.path.isfile(args.image):
        p.error(f"--image {args.image!r} is not a file.")  # Before seconds of loading, not after.
    return args


def load_image(path: str, size: int) -> np.ndarray:
    """RGB uint8 [size, size, 3]: any image file PIL reads, resized to the training caption size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), np.uint8)
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"Cannot read image {path!r} ({err}); pass a PNG or JPEG file.") from None


def sample(args: argparse.Namespace) -> str:
    """The generated text (prompt + continuation for text, the caption for an image)."""
    from gato_jax.load import load_checkpoint
    from gato_jax.rollout.sampling import Sampler, SamplingParams, caption_prompt, text_prompt

    loaded = load_checkpoint(args.workdir, args.step)
    if loaded.tokenizer is None:
        raise ValueError(f"The checkpoint in {args.workdir} has no text tokenizer (its mixture had no text or "
                         "captions), so it cannot sample text; use a checkpoint trained with text or captions.")
    patch = int(loaded.config.model.patch_size)
    if args.image is not None:
        image = load_image(args.image, int(loaded.config.data.caption_image_size))
        prompt, default_t = caption_prompt(loaded.tokenizer, loaded.layout, image, patch), CAPTION_TEMPERATURE
    else:
        prompt, default_t = text_prompt(loaded.tokenizer, loaded.layout, args.prompt, patch), TEXT_TEMPERATURE
    temperature = 0.0 if args.greedy else (default_t if args.temperature is None else args.temperature)
    sampler = Sampler(loaded.model, loaded.layout, cache_size=int(loaded.config.seq_len))
    ids = sampler.generate([prompt], jax.random.key(args.seed), SamplingParams(temperature, args.top_k, args.top_p),
                           args.max_tokens)[0]
    text = loaded.tokenizer.decode(ids) if ids else ""
    return text if args.image is not None else args.prompt + text


def main(argv: Sequence[str] | None = None) -> int:
    from gato_jax.train.checkpoint import CheckpointError

    args = parse_args(argv)
    try:
        print(sample(args))
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
