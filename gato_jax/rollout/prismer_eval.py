"""The `prismer` section of report.json (issue 14): what trains, which experts run, and held-out captions
and visual questions, for a PrismerGato or (the comparison) a plain Gato.

Array key: B = rows (prompts), T = tokens (a power-of-two bucket), V = vocabulary.

Captions: greedy decoding by repeated full passes, exact match, per kind (seen colour-shape pairs, pairs
never seen in training). PrismerGato has no KV-cache decode, and a caption is short (a 7-token prompt at
32 px, at most `CAPTION_MAX_TOKENS` more), so one full pass per generated token over a [32, 32] batch
costs little; it is the same metric `checkpoint_eval.caption_accuracy` reports for Gato (greedy, exact
match), so both models are scored alike (the README table uses this function for both). Ranking the
216 closed scene captions by likelihood was not chosen: 216 rows per image, and an easier task (the
answer set is given, a malformed caption cannot be produced).

Questions: the likeliest candidate of the question type's closed answer set (`answers.answer_accuracy`).

The caller hands in the loaded model and the held-out data (this package never imports data_pipelines).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from gato_jax.load import Loaded
from gato_jax.rollout import answers
from gato_jax.rollout.sampling import allowed_ids, bucket, caption_prompt
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.interleaved import TokenizedPrompt
from gato_jax.tokenizers.sequence import NO_LOCAL_POS, Modality, TokenSequence
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.vocab import VocabLayout
from gato_jax.train import partial

CAPTION_BATCH = 32  # Captions decoded together (the last batch is filled with copies: one compiled shape).
CAPTION_MAX_TOKENS = 24  # Scene captions are ~6-10 pieces; a caption that runs on is wrong anyway.
ATTRIBUTES = ("count", "colour", "shape", "place")


def parameter_summary(model: nnx.Module, frozen: Sequence[str]) -> dict[str, Any]:
    """Trainable and total parameters: frozen groups (`train.frozen`) and frozen expert weights (non-Param
    variables) count in the total only."""
    _, params, rest = nnx.split(model, nnx.Param, ...)
    counts = partial.parameter_counts(params, tuple(frozen), extra=rest)
    return {"trainable_params": counts.trainable, "total_params": counts.total,
            "trainable_fraction": counts.trainable_fraction}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _greedy_step(graphdef, text_size: int, params, seq: TokenSequence, position: jax.Array,
                 allowed_V: jax.Array) -> tuple[TokenSequence, jax.Array]:
    """Writes the argmax (text ids and `<eos>` only) after `position` into every row; returns the rows and ids."""
    logits_BxTxV = nnx.merge(graphdef, params)(seq)
    logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, position, axis=1, keepdims=False)
    token_B = jnp.argmax(jnp.where(allowed_V[None], logits_BxV, -jnp.inf), axis=-1).astype(jnp.int32)
    at = position + 1
    seq = seq._replace(tokens=seq.tokens.at[:, at].set(token_B),
                       modality=seq.modality.at[:, at].set(jnp.where(token_B < text_size, Modality.TEXT,
                                                                     Modality.SPECIAL)),
                       local_pos=seq.local_pos.at[:, at].set(NO_LOCAL_POS),
                       segment_ids=seq.segment_ids.at[:, at].set(1))
    return seq, token_B


def greedy_ids(model: nnx.Module, layout: VocabLayout, prompts: Sequence[TokenSequence],
               max_tokens: int = CAPTION_MAX_TOKENS) -> list[list[int]]:
    """Greedy continuations of same-length prompts (ids before `<eos>`), one full pass per generated token:
    what `Sampler.generate` at temperature 0 returns, without a cache (tests hold them equal for Gato)."""
    graphdef, params = nnx.split(model)
    allowed_V = jnp.asarray(allowed_ids(layout, model.vocab_size))
    eos, length = layout.special_id("<eos>"), prompts[0].length
    rows = [seq_lib.pad_to(p, bucket(length + max_tokens)) for p in prompts]
    seq = TokenSequence(*(jnp.asarray(f) for f in seq_lib.stack(rows + [rows[0]] * (CAPTION_BATCH - len(rows)))))
    ids, done = [[] for _ in prompts], np.zeros(len(prompts), bool)
    for i in range(max_tokens):
        seq, token_B = _greedy_step(graphdef, layout.text_size, params, seq, jnp.int32(length - 1 + i), allowed_V)
        for row, token in enumerate(np.asarray(token_B)[:len(prompts)]):
            done[row] |= token == eos
            if not done[row]:
                ids[row].append(int(token))
        if done.all():
            break
    return ids


def greedy_captions(model: nnx.Module, layout: VocabLayout, tokenizer: TextTokenizer, images: Sequence[np.ndarray],
                    patch_size: int, max_tokens: int = CAPTION_MAX_TOKENS, progress: bool = False) -> list[str]:
    """Greedy captions of same-size images, `CAPTION_BATCH` at a time (`greedy_ids`)."""
    texts = []
    for start in tqdm.trange(0, len(images), CAPTION_BATCH, desc="captions", disable=not progress):
        chunk = images[start:start + CAPTION_BATCH]
        prompts = [caption_prompt(tokenizer, layout, np.asarray(im), patch_size) for im in chunk]
        ids = greedy_ids(model, layout, prompts, max_tokens)
        texts += [tokenizer.decode(row).strip() if row else "" for row in ids]
    return texts


def _mean(values: Sequence[bool]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def caption_scores(texts: Sequence[str], examples: Sequence[Mapping], kind_of: Callable[[Mapping], str],
                   parse_caption: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Exact match over all and per kind (`accuracy_<kind>`), and per scene attribute when `parse_caption`
    is given (None for a text that is no scene's caption)."""
    correct = [text == str(ex["caption"]).strip() for text, ex in zip(texts, examples)]
    kinds = [kind_of(ex) for ex in examples]
    out: dict[str, Any] = {"method": "greedy, one full pass per token, exact match", "examples": len(correct),
                           "accuracy_all": _mean(correct)}
    for kind in sorted(set(kinds)):
        hits = [c for c, k in zip(correct, kinds) if k == kind]
        out[f"examples_{kind}"], out[f"accuracy_{kind}"] = len(hits), _mean(hits)
    if parse_caption is not None:
        pairs = [(parse_caption(str(ex["caption"])), parse_caption(text)) for text, ex in zip(texts, examples)]
        pairs = [(truth, guess) for truth, guess in pairs if truth is not None]
        for attr in ATTRIBUTES:
            out[f"scene_{attr}_accuracy"] = _mean([guess is not None and getattr(guess, attr) == getattr(truth, attr)
                                                   for truth, guess in pairs])
    return out


def prismer_section(loaded: Loaded, caption_examples: Sequence[Mapping], question_prompts: Sequence[TokenizedPrompt],
                    *, caption_kind: Callable[[Mapping], str], parse_caption: Callable[[str], Any] | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """The report's `prismer` section: `trainable_fraction` (and counts), `experts`, held-out caption exact
    match (`captions`: `accuracy_seen_pairs`, `accuracy_novel_pairs`) and question accuracy (`questions`,
    by type, with chance and majority; `question_accuracy` over all). `caption_examples` are the held-out
    examples to score (already selected), `question_prompts` the held-out questions as prompts."""
    model_config, train = loaded.config.model, loaded.config.get("train")
    kind = str(model_config.get("kind", "gato"))
    frozen = tuple(train.get("frozen", ())) if train is not None else ()
    out: dict[str, Any] = {"kind": kind, "experts": list(model_config.prismer.experts) if kind == "prismer" else [],
                           "frozen": list(frozen), **parameter_summary(loaded.model, frozen)}
    if caption_examples:
        texts = greedy_captions(loaded.model, loaded.layout, loaded.tokenizer,
                                [np.asarray(ex["image"]) for ex in caption_examples],
                                int(model_config.patch_size), progress=progress)
        out["captions"] = caption_scores(texts, caption_examples, caption_kind, parse_caption)
    if question_prompts:
        questions = answers.answer_accuracy(loaded.model, list(question_prompts), loaded.tokenizer, loaded.layout)
        out["questions"], out["question_accuracy"] = questions, questions["all"]["accuracy"]
    return out
