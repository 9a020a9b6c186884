"""Multiple-choice answers by likelihood: the candidate the model finds most likely after the prompt wins.

Array key: B = rows (one prompt with one candidate each), T = tokens (padded to a bucket), V = vocabulary.

Each (prompt, candidate) pair is one row: the prompt, then `candidate <eos>` laid out as a training
example ends (`interleaved.tokenize_continuation`), loss-masked on the candidate's tokens. A full
teacher-forced pass gives each row's summed log-likelihood of those tokens; per prompt the largest
wins. Scoring the whole continuation, `<eos>` included, compares complete answers: a candidate that
is a prefix of another ("two" / "twos") cannot win by being short. Rows are right-padded to a
power-of-two bucket and batched in fixed groups of `batch_size` (blank rows fill the last group), so
the pass compiles once per bucket.

Accuracy is reported per question type beside two baselines: chance (the mean of 1 / candidates) and
majority (always answering the type's commonest right answer in the evaluated set, an upper bound
on any answer-prior-only guesser).
"""
from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gato_jax.model import Gato
from gato_jax.rollout.chunks import as_jax
from gato_jax.rollout.sampling import bucket
from gato_jax.tokenizers import interleaved
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.interleaved import TokenizedPrompt
from gato_jax.tokenizers.sequence import TokenSequence
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.vocab import VocabLayout
from gato_jax.train.loss import token_nll

BATCH_ROWS = 16  # (prompt, candidate) rows per forward pass.
RowScorer = Callable[[TokenSequence], np.ndarray]  # [B, T] rows -> float [B] summed log-likelihoods.


def summed_loglik(logits_BxTxV: jax.Array, seq: TokenSequence) -> jax.Array:
    """float32 [B]: each row's log-likelihood of its loss-masked tokens (position t predicts t+1)."""
    nll_BxT = token_nll(logits_BxTxV[:, :-1], seq.tokens[:, 1:])
    return -jnp.sum(jnp.where(seq.loss_mask[:, 1:], nll_BxT, 0.0), axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def _model_loglik(graphdef: Any, params: Any, seq: TokenSequence) -> jax.Array:
    return summed_loglik(nnx.merge(graphdef, params)(seq), seq)


def model_scorer(model: Gato) -> RowScorer:
    """Rows scored by the model's full deterministic pass (jitted once per row shape): a Gato, or any nnx
    model with its call signature (PrismerGato)."""
    graphdef, params = nnx.split(model)
    return lambda seq: np.asarray(_model_loglik(graphdef, params, as_jax(seq)))


def logits_scorer(logits_fn: Callable[[TokenSequence], jax.Array]) -> RowScorer:
    """Rows scored by any `seq [B, T] -> logits [B, T, V]` function (tests, other models)."""
    scored = jax.jit(lambda seq: summed_loglik(logits_fn(seq), seq))
    return lambda seq: np.asarray(scored(as_jax(seq)))


def candidate_rows(item: TokenizedPrompt, tokenizer: TextTokenizer, layout: VocabLayout) -> list[TokenSequence]:
    """One unpadded row per candidate: the prompt (loss off), then `candidate <eos>` (loss on)."""
    patch_size = int(np.sqrt(item.prompt.patch_dim // seq_lib.IMAGE_CHANNELS))
    prompt = item.prompt._replace(loss_mask=np.zeros_like(item.prompt.loss_mask))
    return [seq_lib.concat([prompt, interleaved.tokenize_continuation(tokenizer, layout, text, patch_size)])
            for text in item.candidates]


def row_batches(rows: Sequence[TokenSequence], batch_size: int) -> Iterator[tuple[list[int], TokenSequence]]:
    """(row indices, [batch_size, bucket] batch): rows grouped by length bucket, blank rows filling the
    last batch of each bucket, so a jitted pass compiles once per bucket."""
    by_bucket = collections.defaultdict(list)
    for i, row in enumerate(rows):
        by_bucket[bucket(row.length)].append(i)
    for length, indices in sorted(by_bucket.items()):
        blank = seq_lib.empty(length, int(np.sqrt(rows[indices[0]].patch_dim // seq_lib.IMAGE_CHANNELS)))
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            padded = [seq_lib.pad_to(rows[i], length) for i in chunk]
            yield chunk, seq_lib.stack(padded + [blank] * (batch_size - len(chunk)))


def score_rows(scorer: RowScorer, rows: Sequence[TokenSequence], batch_size: int = BATCH_ROWS) -> np.ndarray:
    """float [R]: every row's score, rows grouped by length bucket into fixed [batch_size, bucket] batches."""
    scores = np.zeros(len(rows), np.float64)
    for chunk, batch in row_batches(rows, batch_size):
        scores[chunk] = scorer(batch)[:len(chunk)]
    return scores


@functools.partial(jax.jit, static_argnums=0)
def _model_token_nll(graphdef: Any, params: Any, seq: TokenSequence) -> jax.Array:
    return token_nll(nnx.merge(graphdef, params)(seq)[:, :-1], seq.tokens[:, 1:])


def masked_token_nll(model: Gato | Callable[[TokenSequence], jax.Array], rows: Sequence[TokenSequence],
                     batch_size: int = BATCH_ROWS) -> list[np.ndarray]:
    """Per row, the loss (nats) of each of its loss-masked tokens, in order: where in an example the model
    pays, e.g. each demonstration's word of a few-shot episode. `model`: a Gato, or any `seq [B, T] ->
    logits [B, T, V]` function."""
    if isinstance(model, nnx.Module):
        graphdef, params = nnx.split(model)
        nll_fn = functools.partial(_model_token_nll, graphdef, params)
    else:
        nll_fn = jax.jit(lambda seq: token_nll(model(seq)[:, :-1], seq.tokens[:, 1:]))
    out: list[np.ndarray] = [np.zeros(0)] * len(rows)
    for chunk, batch in row_batches(rows, batch_size):
        nll_BxT = np.asarray(nll_fn(as_jax(batch)))
        for r, i in enumerate(chunk):
            out[i] = nll_BxT[r][np.asarray(batch.loss_mask[r, 1:], bool)]
    return out


def choose_answers(scorer: RowScorer, items: Sequence[TokenizedPrompt], tokenizer: TextTokenizer,
                   layout: VocabLayout, batch_size: int = BATCH_ROWS) -> np.ndarray:
    """int [N]: per prompt, the index of its most likely candidate (the first on a tie)."""
    rows = [row for item in items for row in candidate_rows(item, tokenizer, layout)]
    scores = score_rows(scorer, rows, batch_size)
    starts = np.cumsum([0] + [len(item.candidates) for item in items])
    return np.asarray([int(np.argmax(scores[a:b])) for a, b in zip(starts[:-1], starts[1:])], np.int64)


def accuracy_by_type(items: Sequence[TokenizedPrompt], chosen: Sequence[int]) -> dict[str, dict[str, float]]:
    """{question type: accuracy, chance, majority, count (and ideal, where every item has one; and
    `by_group`, each group's accuracy and count, where every item has a group)}, plus 'all': each averaged
    over every item (its majority answers each type's commonest answer). Few-shot items are grouped by the
    attribute their words name: a lookup that matches whole images shows as a gain on some attributes only."""
    groups = collections.defaultdict(list)
    for item, pick in zip(items, chosen):
        groups[item.question_type].append((item, int(pick)))
    out = {name: _type_scores(pairs) | _group_scores(pairs) for name, pairs in sorted(groups.items())}
    total = sum(s["count"] for s in out.values())
    keys = ("accuracy", "chance", "majority") + (("ideal",) if all("ideal" in s for s in out.values()) else ())
    out["all"] = {key: sum(s[key] * s["count"] for s in out.values()) / total for key in keys} | {"count": total}
    return out


def _group_scores(pairs: list[tuple[TokenizedPrompt, int]]) -> dict[str, dict[str, dict[str, float]]]:
    """{'by_group': {group: accuracy, count}}, or {} when any item has no group (so a type's groups always
    add up to its count)."""
    if any(item.group is None for item, _ in pairs):
        return {}
    by_group = collections.defaultdict(list)
    for item, pick in pairs:
        by_group[item.group].append(pick == item.answer)
    return {"by_group": {g: {"accuracy": float(np.mean(right)), "count": len(right)}
                         for g, right in sorted(by_group.items())}}


def _type_scores(pairs: list[tuple[TokenizedPrompt, int]]) -> dict[str, float]:
    right = collections.Counter(item.candidates[item.answer] for item, _ in pairs)
    scores = {"accuracy": float(np.mean([pick == item.answer for item, pick in pairs])),
              "chance": float(np.mean([1.0 / len(item.candidates) for item, _ in pairs])),
              "majority": right.most_common(1)[0][1] / len(pairs), "count": len(pairs)}
    if all(item.ideal is not None for item, _ in pairs):  # Few-shot: what the demonstrations allow.
        scores["ideal"] = float(np.mean([item.ideal for item, _ in pairs]))
    return scores


def answer_accuracy(model: Gato | RowScorer, items: Sequence[TokenizedPrompt], tokenizer: TextTokenizer,
                    layout: VocabLayout, batch_size: int = BATCH_ROWS) -> dict[str, dict[str, float]]:
    """Multiple-choice accuracy by question type (with chance and majority) for a Gato or a row scorer."""
    if not items:
        raise ValueError("answer_accuracy needs at least one prompt.")
    scorer = model_scorer(model) if isinstance(model, nnx.Module) else model  # Gato or PrismerGato.
    return accuracy_by_type(items, choose_answers(scorer, items, tokenizer, layout, batch_size))
