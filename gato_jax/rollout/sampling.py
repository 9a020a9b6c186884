"""Text and caption generation over the KV cache: one prefill chunk, then one jitted call per token.

Array key: B = rows, P = prompt tokens (padded to a bucket), V = vocabulary (padded), S = cache slots.

Sampling is restricted to text ids and `<eos>` (a text continuation never emits value or image ids)
and stops at `<eos>`. Prompts are right-padded to a power-of-two bucket with padding tokens (segment
0: they take cache slots but are never attended to), so prompts of different lengths, and rows of
different lengths in one batch, share one compiled prefill. Temperature, top-k and top-p are traced
values, not constants: changing them does not recompile.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gato_jax.model import Gato, KVCache
from gato_jax.rollout.chunks import as_jax, place_like, text_chunk
from gato_jax.tokenizers import episode as episode_lib
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.sequence import TokenSequence
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.vocab import VocabLayout

MIN_BUCKET = 16  # Smallest prefill length: short prompts share one compile.


class SamplingParams(NamedTuple):
    temperature: float = 1.0  # 0 (or greedy) = argmax.
    top_k: int = 0  # Keep the k most likely ids; 0 = all.
    top_p: float = 1.0  # Keep the smallest set whose probability reaches top_p; 1 = all.


DEFAULT_SAMPLING = SamplingParams()


def bucket(length: int) -> int:
    """The next power of two >= length (at least MIN_BUCKET)."""
    return max(MIN_BUCKET, 1 << max(0, int(length) - 1).bit_length())


def allowed_ids(layout: VocabLayout, vocab_size: int) -> np.ndarray:
    """bool [V]: text ids and `<eos>`."""
    allowed = np.zeros(vocab_size, bool)
    allowed[:layout.text_size] = True
    allowed[layout.special_id("<eos>")] = True
    return allowed


def filter_logits(logits_BxV: jax.Array, allowed_V: jax.Array, temperature: jax.Array, top_k: jax.Array,
                  top_p: jax.Array) -> jax.Array:
    """Logits with disallowed, beyond-top-k and beyond-top-p ids at -inf, divided by the temperature."""
    logits = jnp.where(allowed_V[None], logits_BxV, -jnp.inf) / jnp.maximum(temperature, 1e-6)
    sorted_BxV = jnp.sort(logits, axis=-1)[:, ::-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, logits.shape[-1]), logits.shape[-1])
    kth_B = jnp.take(sorted_BxV, k - 1, axis=-1)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # Mass of strictly more likely ids.
    # The least likely id still kept by top-p: the last one whose predecessors hold < top_p.
    cut_B = jnp.min(jnp.where(before_BxV < top_p, sorted_BxV, jnp.inf), axis=-1)
    threshold_B = jnp.maximum(kth_B, cut_B)
    return jnp.where(logits >= threshold_B[:, None], logits, -jnp.inf)


def choose(key: jax.Array, logits_BxV: jax.Array, allowed_V: jax.Array, params: SamplingParams) -> jax.Array:
    """int32 [B]: the next ids (argmax at temperature 0)."""
    temperature, top_k, top_p = (jnp.asarray(x) for x in params)
    filtered = filter_logits(logits_BxV, allowed_V, temperature, top_k, top_p)
    sampled = jax.random.categorical(key, filtered, axis=-1)
    return jnp.where(temperature > 0, sampled, jnp.argmax(filtered, axis=-1)).astype(jnp.int32)


def text_prompt(tokenizer: TextTokenizer, layout: VocabLayout, text: str, patch_size: int) -> TokenSequence:
    """`<bos>` text, without `<eos>` (the model continues it); an empty text is `<bos>` alone."""
    seq = episode_lib.tokenize_text(tokenizer, layout, text or "x", patch_size)
    return seq_lib.slice_tokens(seq, 0, seq.length - 1 if text else 1)


def caption_prompt(tokenizer: TextTokenizer, layout: VocabLayout, image: np.ndarray, patch_size: int) -> TokenSequence:
    """`<image>` patches `</image>` `<bos>`: what a caption is generated after."""
    seq = episode_lib.tokenize_caption(tokenizer, layout, image, "a", patch_size)
    bos = int(np.flatnonzero(seq.tokens == layout.special_id("<bos>"))[0])
    return seq_lib.slice_tokens(seq, 0, bos + 1)


def _prefill_fn(graphdef, params, cache: KVCache, seq: TokenSequence, last_B: jax.Array):
    """Decodes the padded prompts; returns the logits after each row's last real token."""
    logits_BxPxV, cache = nnx.merge(graphdef, params).decode(seq, cache)
    return jnp.take_along_axis(logits_BxPxV, last_B[:, None, None], axis=1)[:, 0], cache


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _prefill(graphdef, params, cache: KVCache, seq: TokenSequence, last_B: jax.Array):
    """One compile per (rows, bucket): tests hold it to that with `chex.assert_max_traces` on `_prefill_fn`."""
    return _prefill_fn(graphdef, params, cache, seq, last_B)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=3)
def _step(graphdef, layout: VocabLayout, params, cache: KVCache, logits_BxV, allowed_V, key,
          sampling: SamplingParams):
    """Chooses one id per row and decodes it: (ids [B], next logits [B, V], cache)."""
    model = nnx.merge(graphdef, params)
    token_B = choose(key, logits_BxV, allowed_V, sampling)
    next_BxtxV, cache = model.decode(text_chunk(token_B, layout, seq_lib.patch_dim_for(model.dims.patch_size)), cache)
    return token_B, next_BxtxV[:, 0], cache


class Sampler:
    """Generates text after prompts, batched; `generate` returns the ids up to (not including) `<eos>`."""

    def __init__(self, model: Gato, layout: VocabLayout, *, cache_size: int):
        self.model, self.layout, self.cache_size = model, layout, cache_size
        self.graphdef, self.params = nnx.split(model)
        self.allowed_V = jnp.asarray(allowed_ids(layout, model.vocab_size))

    def _padded(self, prompts: list[TokenSequence]) -> tuple[TokenSequence, np.ndarray]:
        """Prompts left-padded to one bucketed length (the exact length when the bucket would not fit).

        Left, so every prompt ends right before the first generated token: padding still takes write
        numbers in the cache, and right padding would put an ALiBi gap between prompt and continuation.
        """
        longest = max(p.length for p in prompts)
        if longest > self.cache_size:
            raise ValueError(f"A prompt of {longest} tokens exceeds the model's context of {self.cache_size}; "
                             "shorten it.")
        length = bucket(longest) if bucket(longest) <= self.cache_size else longest
        patch_size = self.model.dims.patch_size
        left_pad = lambda p: seq_lib.concat([seq_lib.empty(length - p.length, patch_size), p])
        rows = seq_lib.stack([p if p.length == length else left_pad(p) for p in prompts])
        return as_jax(rows), np.full((len(prompts),), length - 1, np.int32)

    def generate(self, prompts: list[TokenSequence], key: jax.Array, sampling: SamplingParams = DEFAULT_SAMPLING,
                 max_tokens: int = 64) -> list[list[int]]:
        """Continues each prompt until `<eos>` or `max_tokens` ids; ids exclude `<eos>`.

        Past the cache size the oldest tokens slide out of the ring (a sliding window of the context).
        """
        seq, last_B = self._padded(prompts)
        cache = place_like(self.model.init_cache(len(prompts), self.cache_size), self.params)
        logits_BxV, cache = _prefill(self.graphdef, self.params, cache, seq, jnp.asarray(last_B))
        sampling = SamplingParams(np.float32(sampling.temperature), np.int32(sampling.top_k),
                                  np.float32(sampling.top_p))
        eos = self.layout.special_id("<eos>")
        out, done = [[] for _ in prompts], np.zeros(len(prompts), bool)
        for _ in range(max_tokens):
            key, step_key = jax.random.split(key)
            token_B, logits_BxV, cache = _step(self.graphdef, self.layout, self.params, cache, logits_BxV,
                                              self.allowed_V, step_key, sampling)
            for i, token in enumerate(np.asarray(token_B)):
                done[i] |= token == eos
                if not done[i]:
                    out[i].append(int(token))
            if done.all():
                break
        return out
