"""`make sample`: `python -m gato_jax.sample --workdir DIR (--prompt TEXT | --image FILE)... [options]`.

Continues a text prompt, captions an image, or continues an interleaved image-text prompt (KOSMOS-1
documents: `--image a.png --image b.png --prompt "which image has more shapes?"`, pieces in the order
given), with nothing but the checkpoint: the model, the vocabulary and the SentencePiece model all
come from it (parameters only: no optimizer is built). One `--image` alone is captioned as in training
(`<image>` patches `</image>` `<bos>`); otherwise the pieces are laid out as training documents are
(`<bos>`, then each text or `<image>` patches `</image>`, in order) and the model continues after the last.
Sampling is restricted to text ids and `<eos>`, stops at `<eos>`, and runs over the KV cache (one
prefill chunk, then one jitted call per token). Captions are sampled at temperature 0.9 as in the paper,
text at 1.0, unless --temperature or --greedy says otherwise. Every mistake (no checkpoint, another
vocabulary, a checkpoint without a text tokenizer, an unreadable or too small image, an option out of
range) ends with one line (`gato_jax.cli`).
"""
from __future__ import annotations

import os
import sys

import jax
import numpy as np
from absl import flags
from PIL import Image, UnidentifiedImageError

from gato_jax import cli
from gato_jax.errors import UsageError
from gato_jax.load import Loaded, load_checkpoint
from gato_jax.logs import quiet_libraries
from gato_jax.rollout.sampling import Sampler, SamplingParams, caption_prompt, text_prompt
from gato_jax.tokenizers import interleaved
from gato_jax.tokenizers.sequence import TokenSequence

PROG = "python -m gato_jax.sample"
CAPTION_TEMPERATURE, TEXT_TEMPERATURE = 0.9, 1.0  # [P] for captions; plain sampling for text.
MAX_IMAGE_SIDE = 8192  # Larger files are almost surely not what was meant (and cost seconds to decode).


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "Run directory (or its checkpoints/ directory).", flag_values=fv)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest readable).", flag_values=fv)
    flags.DEFINE_multi_string("prompt", [], "Text to continue ('' starts from <bos>); repeat with --image for an "
                              "interleaved prompt.", flag_values=fv)
    flags.DEFINE_multi_string("image", [], "Image file (resized to config.data.caption_image_size): one alone is "
                              "captioned; repeat, with --prompt, for an interleaved prompt.", flag_values=fv)
    flags.DEFINE_float("temperature", None, "Default 0.9 for captions, 1.0 for text.", flag_values=fv)
    flags.DEFINE_integer("top_k", 0, "Sample from the k most likely ids (0 = all).", flag_values=fv)
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = all).", flag_values=fv)
    flags.DEFINE_integer("max_tokens", 64, "Most new tokens.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "RNG seed.", flag_values=fv)
    flags.DEFINE_bool("greedy", False, "Argmax instead of sampling.", flag_values=fv)


PIECE_FLAGS = ("prompt", "image")


def ordered_pieces(argv: list[str]) -> list[tuple[str, str]]:
    """(flag, value) of every --prompt and --image in the order given (absl keeps each flag's values in
    order, but not how the two interleave)."""
    pieces, i = [], 0
    while i < len(argv):
        name, equals, value = argv[i].lstrip("-").partition("=")
        if argv[i].startswith("--") and name in PIECE_FLAGS:
            if not equals and i + 1 < len(argv):  # "--image FILE" rather than "--image=FILE".
                i, value = i + 1, argv[i + 1]
            pieces.append((name, value))
        i += 1
    return pieces


def check_args(args: dict) -> None:
    """Everything that can be checked before the checkpoint is read."""
    if not args["prompt"] and not args["image"]:
        raise UsageError("pass --prompt TEXT (continue text), --image FILE (caption an image), or several of both "
                         "in order (an interleaved prompt).")
    if args["max_tokens"] <= 0 or args["top_k"] < 0 or not 0 < args["top_p"] <= 1:
        raise UsageError(f"--max_tokens={args['max_tokens']}, --top_k={args['top_k']}, --top_p={args['top_p']}: "
                         "--max_tokens must be > 0, --top_k >= 0 and --top_p in (0, 1].")
    cli.check_positive_flag("temperature", args["temperature"], allow_zero=True)
    for image in args["image"]:
        if not os.path.isfile(image):
            raise UsageError(f"--image {image!r} is not a file; pass the path of a PNG or JPEG image.")
    if not os.path.exists(args["workdir"]):
        raise UsageError(f"--workdir {args['workdir']} does not exist; pass the run directory `make train` wrote.")


def load_image(path: str, size: int, min_side: int = 1) -> np.ndarray:
    """RGB uint8 [size, size, 3]: any image file PIL reads, resized to the training caption size.

    UsageError when the file is not an image PIL reads, or is smaller than `min_side` (one patch) or
    larger than MAX_IMAGE_SIDE on a side."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if min(width, height) < min_side or max(width, height) > MAX_IMAGE_SIDE:
                raise UsageError(f"--image {path!r} is {width}x{height} pixels; pass an image between {min_side} and "
                                 f"{MAX_IMAGE_SIDE} pixels a side (it is resized to {size}x{size}).")
            return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), np.uint8)
    except (OSError, UnidentifiedImageError) as err:
        raise UsageError(f"cannot read --image {path!r} ({cli.one_line(err, 120)}); pass a PNG or JPEG file.") from None


def interleaved_prompt(pieces: list[tuple[str, str]], loaded: Loaded) -> TokenSequence:
    """`<bos>` then each text or image in order, left open for the model to continue."""
    patch, size = int(loaded.config.model.patch_size), int(loaded.config.data.caption_image_size)
    parts = [load_image(value, size, min_side=patch) if kind == "image" else interleaved.TextPiece(value, False)
             for kind, value in pieces]
    return interleaved.tokenize_interleaved(loaded.tokenizer, loaded.layout, parts, patch, eos=False)


def sample(args: dict, loaded: Loaded, pieces: list[tuple[str, str]] | None = None) -> str:
    """The generated text (prompt + continuation for text, the caption for an image, the continuation
    of an interleaved prompt). `pieces`: the --prompt/--image values in command-line order."""
    patch = int(loaded.config.model.patch_size)
    pieces = pieces or [("image", v) for v in args["image"]] + [("prompt", v) for v in args["prompt"]]
    if len(pieces) > 1:
        prompt, default_t = interleaved_prompt(pieces, loaded), CAPTION_TEMPERATURE
    elif pieces[0][0] == "image":
        image = load_image(pieces[0][1], int(loaded.config.data.caption_image_size), min_side=patch)
        prompt, default_t = caption_prompt(loaded.tokenizer, loaded.layout, image, patch), CAPTION_TEMPERATURE
    else:
        prompt, default_t = text_prompt(loaded.tokenizer, loaded.layout, pieces[0][1], patch), TEXT_TEMPERATURE
    temperature = 0.0 if args["greedy"] else (default_t if args["temperature"] is None else args["temperature"])
    sampler = Sampler(loaded.model, loaded.layout, cache_size=int(loaded.config.seq_len))
    ids = sampler.generate([prompt], jax.random.key(args["seed"]),
                           SamplingParams(temperature, args["top_k"], args["top_p"]), args["max_tokens"])[0]
    text = loaded.tokenizer.decode(ids) if ids else ""
    return pieces[0][1] + text if pieces == [("prompt", pieces[0][1])] else text


def _main(argv: list[str]) -> int:
    args = cli.parse(argv, _define, prog=PROG, config=False, required=("workdir",)).flags
    check_args(args)
    quiet_libraries()
    loaded = load_checkpoint(args["workdir"], args["step"])
    kind = str(loaded.config.model.get("kind", "gato"))
    if kind != "gato":
        raise UsageError(f"the checkpoint in {args['workdir']} is a {kind!r} model, which has no cached decode; "
                         "`make sample` samples Gato checkpoints (score a Prismer run with `make eval`).")
    if loaded.tokenizer is None:
        raise UsageError(f"the checkpoint in {args['workdir']} has no text tokenizer (its mixture had no text or "
                         "captions), so it cannot sample text; use a checkpoint trained with text or captions.")
    print(sample(args, loaded, ordered_pieces(list(argv))))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs sampling on argv (default sys.argv[1:]); returns the exit status."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
