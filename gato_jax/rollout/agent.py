"""Acting: observation tokens -> KV cache -> constrained action sampling, batched over environments.

Array key: B = environments in the batch, t = tokens of one observation (separator included),
A = action tokens per timestep, P = prompt tokens, V = vocabulary (padded), S = cache slots.

One timestep costs one jitted call (`Agent.act`): reset the cache rows whose environment started a
new episode, decode one chunk holding the previous timestep's last action token and this observation,
then for each of the A action tokens: mask its logits to its valid id range (docs/TOKEN_FORMAT.md
"Deployment": only ids valid for the action field), sample at its field kind's temperature (at 0: the
likeliest id, or for continuous actions by default the bin nearest the distribution's mean; `config.eval.
continuous_temperature`, `continuous_mean`) and decode it so it enters the cache, except the last, which
waits in `ActState.pending_B` for the next chunk.
Deferring that write saves one model call per timestep (half of an Atari act step) and changes
nothing the model sees: every token keeps its order and its distance to every other token (all write
numbers shift by one), and a row that starts an episode writes padding there (never attended to).
Every shape is fixed by (B, t, A, S), so it compiles once per task and batch size.

A demonstration prompt (docs/TOKEN_FORMAT.md: "a successful demonstration of the same task fills the context
before acting") is decoded once and pinned: later tokens slide through a ring over the rest of the
cache, so episodes of any length run, and a finished episode's row is reset to the prompt alone.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gato_jax.model import Gato, KVCache, pin_prefix, reset_to_pinned
from gato_jax.rollout.chunks import action_chunk, as_jax, place_like
from gato_jax.tokenizers import episode as episode_lib
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers import values as values_lib
from gato_jax.tokenizers.sequence import Modality, TokenSequence
from gato_jax.tokenizers.spec import FieldKind, TaskSpec
from gato_jax.tokenizers.vocab import VocabLayout


class ActionTokens(NamedTuple):
    """Per action token (in `TaskSpec.ordered_action` order): its valid id range, modality and bin values."""

    lo_A: np.ndarray  # int32, inclusive.
    hi_A: np.ndarray  # int32, exclusive.
    modality_A: np.ndarray  # int32 Modality.DISCRETE or CONTINUOUS.
    # float32 [A, K] (K = continuous bins): the value each bin of a continuous token decodes to (before the
    # field's positive scale, which changes neither a mean's nearest bin nor the order); zeros for discrete.
    bin_values_AxK: np.ndarray


class ActState(NamedTuple):
    """What the act step carries from one timestep to the next."""

    cache: KVCache
    pending_B: jax.Array  # int32: each row's last action token, not yet in the cache; -1 = none.


class ActOutput(NamedTuple):
    """One timestep's sampled actions for the whole batch."""

    action_ids_BxA: jax.Array  # int32 vocabulary ids, each inside its token's range.
    logits_BxAxV: jax.Array  # float32 raw logits that each action token was sampled from (before masking).


def action_tokens(spec: TaskSpec, layout: VocabLayout) -> ActionTokens:
    """Valid ranges (from `episode.action_token_ranges`) and the modality of every action token."""
    ranges = np.asarray(episode_lib.action_token_ranges(spec, layout), np.int32).reshape(-1, 2)
    fields = [f for f in spec.ordered_action() for _ in range(f.size)]
    modality = [Modality.DISCRETE if f.kind == FieldKind.DISCRETE else Modality.CONTINUOUS for f in fields]
    lo, hi = layout.continuous_range
    bins = np.arange(lo, hi)
    values = [values_lib.detokenize_continuous(bins, layout, companded=f.companded, field=f.name)
              if f.kind == FieldKind.CONTINUOUS else np.zeros(hi - lo, np.float32) for f in fields]
    return ActionTokens(ranges[:, 0].copy(), ranges[:, 1].copy(), np.asarray(modality, np.int32),
                        np.asarray(values, np.float32).reshape(len(fields), hi - lo))


def sample_in_range(key: jax.Array, logits_BxV: jax.Array, lo: jax.Array, hi: jax.Array,
                    temperature: jax.Array) -> jax.Array:
    """int32 [B] ids in [lo, hi): categorical at `temperature`, argmax when it is 0."""
    ids_V = jnp.arange(logits_BxV.shape[-1])
    valid_V = (ids_V >= lo) & (ids_V < hi)
    masked_BxV = jnp.where(valid_V[None, :], logits_BxV, -jnp.inf)
    sampled_B = jax.random.categorical(key, masked_BxV / jnp.maximum(temperature, 1e-6), axis=-1)
    return jnp.where(temperature > 0, sampled_B, jnp.argmax(masked_BxV, axis=-1)).astype(jnp.int32)


def mean_bin(logits_BxV: jax.Array, lo: jax.Array, bin_values_K: jax.Array) -> jax.Array:
    """int32 [B] ids in [lo, lo + K): the bin whose value is nearest the mean of the model's distribution
    over the K bins (under that distribution, the estimate with the least expected squared error).

    Measured, not derived: in closed loop it kept the InvertedPendulum up where the likeliest bin let it
    fall (README "Results", `control_mix`: 0.111 -> 0.965 for one checkpoint), although on the expert's own
    held-out states it lies further from the expert's action (MAE 0.436 vs 0.241 for another).
    """
    num_bins = bin_values_K.shape[-1]
    probs_BxK = jax.nn.softmax(jax.lax.dynamic_slice_in_dim(logits_BxV, lo, num_bins, axis=-1), axis=-1)
    mean_B = probs_BxK @ bin_values_K
    return (lo + jnp.argmin(jnp.abs(bin_values_K[None, :] - mean_B[:, None]), axis=-1)).astype(jnp.int32)


def choose_token(key: jax.Array, logits_BxV: jax.Array, lo: jax.Array, hi: jax.Array, temperature: jax.Array,
                 mean: jax.Array, bin_values_K: jax.Array) -> jax.Array:
    """`sample_in_range`, or `mean_bin` where `mean` (a continuous token acting on its mean)."""
    return jnp.where(mean, mean_bin(logits_BxV, lo, bin_values_K),
                     sample_in_range(key, logits_BxV, lo, hi, temperature))


def decode_last(model: Gato, chunk: TokenSequence, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """`model.decode`, keeping only the logits of the chunk's last token [B, V].

    Projecting every position of an Atari chunk onto the vocabulary is a third of the act step's FLOPs
    (measured: 1.82 vs 1.16 GFLOP at B=16 for cpu_small); only the last position is sampled from.
    """
    x_BxtxD, cache = model.decode_hidden(chunk, cache)
    return model.logits(x_BxtxD[:, -1:])[:, 0], cache


def _act_fn(graphdef: Any, params: Any, state: ActState, obs: TokenSequence, reset_B: jax.Array,
            key: jax.Array, actions: ActionTokens, temperature_A: jax.Array,
            mean_A: jax.Array) -> tuple[ActState, ActOutput]:
    """The pure act step (jitted by `Agent`): see the module docstring. `temperature_A`: one per action token;
    `mean_A`: which tokens take `mean_bin` instead."""
    model = nnx.merge(graphdef, params)
    cache = reset_to_pinned(state.cache, reset_B)
    patch_dim = obs.patches.shape[-1]
    pending = action_chunk(jnp.maximum(state.pending_B, 0), actions.modality_A[-1], patch_dim)
    pending = pending._replace(segment_ids=((state.pending_B >= 0) & ~reset_B)[:, None].astype(jnp.int32))
    chunk = jax.tree.map(lambda a, b: jnp.concatenate([a, b.astype(a.dtype)], axis=1), pending, obs)
    logits_BxV, cache = decode_last(model, chunk, cache)

    def one_token(carry, xs):
        cache, logits_BxV = carry
        lo, hi, modality, values_K, token_key, temperature, mean = xs
        token_B = choose_token(token_key, logits_BxV, lo, hi, temperature, mean, values_K)
        next_BxV, cache = decode_last(model, action_chunk(token_B, modality, patch_dim), cache)
        return (cache, next_BxV), (token_B, logits_BxV)

    keys_A = jax.random.split(key, actions.lo_A.shape[0])
    xs = (actions.lo_A, actions.hi_A, actions.modality_A, actions.bin_values_AxK, keys_A, temperature_A, mean_A)
    carry, tokens, logits = (cache, logits_BxV), [], []
    if actions.lo_A.shape[0] > 1:  # All but the last action token enter the cache now.
        carry, (tokens_AxB, logits_AxBxV) = jax.lax.scan(one_token, carry, jax.tree.map(lambda x: x[:-1], xs))
        tokens, logits = [tokens_AxB], [logits_AxBxV]
    cache, last_BxV = carry
    last_B = choose_token(keys_A[-1], last_BxV, actions.lo_A[-1], actions.hi_A[-1], temperature_A[-1], mean_A[-1],
                          actions.bin_values_AxK[-1])
    tokens_AxB = jnp.concatenate(tokens + [last_B[None]], axis=0)
    logits_AxBxV = jnp.concatenate(logits + [last_BxV[None]], axis=0)
    return ActState(cache, last_B), ActOutput(tokens_AxB.T, jnp.swapaxes(logits_AxBxV, 0, 1))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _act_jit(graphdef, params, state, obs, reset_B, key, actions, temperature_A, mean_A):
    """Shared by every Agent over the same architecture: one compile per (B, t, A, S), not per agent."""
    return _act_fn(graphdef, params, state, obs, reset_B, key, actions, temperature_A, mean_A)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _decode_jit(graphdef, params, cache: KVCache, seq: TokenSequence) -> KVCache:
    return nnx.merge(graphdef, params).decode(seq, cache)[1]


class Agent:
    """Gato acting on one task over a batch of environments, with an optional pinned prompt.

    Functional where it matters: `initial_state` and `act` take and return the `ActState` (cache and
    pending action token) and take an explicit RNG key; the agent object only holds constants (weights,
    spec, sampling temperatures). The act step compiles once per (B, t, A, S) (tests hold it to that with
    `chex.assert_max_traces` on `_act_fn`).

    `temperature` applies to discrete action tokens and `continuous_temperature` (None: the same) to
    continuous ones: sampling a 1024-bin action at temperature 1 adds noise that a balancing task does not
    survive (README "Results"), while an Atari policy needs its sampling (greedy Atari play was worse).
    At continuous temperature 0, `continuous_mean` acts on the bin nearest the distribution's mean
    (`mean_bin`), else on its likeliest bin.
    """

    def __init__(self, model: Gato, spec: TaskSpec, layout: VocabLayout, *, batch_size: int, cache_size: int,
                 temperature: float = 1.0, continuous_temperature: float | None = None,
                 continuous_mean: bool = True):
        if spec.tokens_per_timestep > cache_size // 2:
            raise ValueError(f"A timestep of {spec.name!r} has {spec.tokens_per_timestep} tokens; a cache of "
                             f"{cache_size} slots needs at least twice that. Use a larger cache (config.seq_len).")
        self.spec, self.layout = spec, layout
        self.batch_size, self.cache_size = batch_size, cache_size
        self.model = model
        self.graphdef, self.params = nnx.split(model)
        self.actions = action_tokens(spec, layout)
        # On the device once: the act step would otherwise copy these host arrays on every call.
        self._actions_on_device = ActionTokens(*(jnp.asarray(a) for a in self.actions))
        self.frame_history = episode_lib.FrameHistory(spec)
        continuous = temperature if continuous_temperature is None else continuous_temperature
        is_continuous_A = self.actions.modality_A == Modality.CONTINUOUS
        self.temperature_A = jnp.asarray(np.where(is_continuous_A, continuous, temperature), jnp.float32)
        self.mean_A = jnp.asarray(is_continuous_A & bool(continuous_mean) & (continuous == 0))

    @property
    def max_prompt_tokens(self) -> int:
        """Half the cache, in whole timesteps (as `ControlSource` sizes its training prompts)."""
        return (self.cache_size // 2) // self.spec.tokens_per_timestep * self.spec.tokens_per_timestep

    def initial_state(self, prompt: TokenSequence | None = None) -> ActState:
        """An empty cache, or one holding `prompt` ([P] for every row, or [B, P]) pinned at its front."""
        pending_B = place_like(jnp.full((self.batch_size,), -1, jnp.int32), self.params)
        return ActState(self.initial_cache(prompt), pending_B)

    def initial_cache(self, prompt: TokenSequence | None = None) -> KVCache:
        """The cache of `initial_state`."""
        cache = place_like(self.model.init_cache(self.batch_size, self.cache_size), self.params)
        if prompt is None:
            return cache
        prompt = broadcast_rows(prompt, self.batch_size)
        if prompt.length > self.max_prompt_tokens:
            raise ValueError(f"A prompt of {prompt.length} tokens exceeds half the {self.cache_size}-slot cache "
                             f"({self.max_prompt_tokens} tokens in whole timesteps); cut it.")
        return pin_prefix(_decode_jit(self.graphdef, self.params, cache, as_jax(prompt)))

    def observe(self, observations: Sequence[Mapping], reset_B: np.ndarray | None = None) -> TokenSequence:
        """Host side: B observations -> the [B, t] chunk (observation tokens and the separator).

        With `spec.frame_history` > 1 each row's frame carries its episode's last frames (`reset_B`, default
        every row, marks rows whose episode starts with this observation), as training windows do."""
        reset_B = np.ones(len(observations), bool) if reset_B is None else np.asarray(reset_B, bool)
        observations = self.frame_history(list(observations), reset_B)
        rows = [episode_lib.observation_tokens(self.spec, self.layout, obs) for obs in observations]
        return seq_lib.stack(rows)

    def act(self, state: ActState, obs: TokenSequence, reset_B: np.ndarray,
            key: jax.Array) -> tuple[ActState, ActOutput]:
        """One timestep for every row: rows with `reset_B` forget all but the prompt first. Donates `state`.

        Returns at once (JAX dispatches asynchronously): host work placed before reading the output
        overlaps the model's step.
        """
        return _act_jit(self.graphdef, self.params, state, as_jax(obs), jnp.asarray(reset_B, bool), key,
                        self._actions_on_device, self.temperature_A, self.mean_A)

    def decode_actions(self, action_ids_BxA) -> list[dict[str, np.ndarray]]:
        """Sampled ids -> one {field: value} action dict per row."""
        ids = np.asarray(action_ids_BxA)
        return [episode_lib.decode_action(self.spec, self.layout, row) for row in ids]


def broadcast_rows(seq: TokenSequence, batch_size: int) -> TokenSequence:
    """[T] -> [B, T] (the same sequence in every row); [B, T] is checked and returned."""
    if seq.tokens.ndim == 1:
        return TokenSequence(*(np.broadcast_to(np.asarray(f)[None], (batch_size, *np.shape(f))) for f in seq))
    if seq.tokens.shape[0] != batch_size:
        raise ValueError(f"Prompt has {seq.tokens.shape[0]} rows, the agent {batch_size}.")
    return seq


# ---------------------------------------------------------------------------------------------------------
# Demonstration prompts.


def episode_steps(episode: Mapping) -> dict:
    """An episode as `tokenize_episode` wants it: {'observation': {...}, 'action': {...}} of [N, ...] arrays.

    Accepts RLDS-like episodes ({'steps': {...}}) or the steps dict itself.
    """
    steps = episode["steps"] if "steps" in episode else episode
    return {"observation": dict(steps["observation"]), "action": dict(steps["action"])}


def _num_steps(steps: Mapping) -> int:
    return len(next(iter(steps["action"].values())))


def demonstration(spec: TaskSpec, layout: VocabLayout, episode: Mapping, max_tokens: int) -> TokenSequence:
    """The end of one demonstration episode, in whole timesteps, at most `max_tokens` tokens."""
    steps = episode_steps(episode)
    n = min(max_tokens // spec.tokens_per_timestep, _num_steps(steps))
    if n <= 0:
        raise ValueError(f"A prompt of {max_tokens} tokens holds no timestep of {spec.name!r} "
                         f"({spec.tokens_per_timestep} tokens); use a larger cache.")
    read = lambda lo, hi: {role: {k: np.asarray(v)[lo:hi] for k, v in fields.items()} for role, fields in steps.items()}
    total = _num_steps(steps)
    seq = episode_lib.tokenize_window(spec, layout, read, total - n, total)
    return seq._replace(loss_mask=np.zeros_like(seq.loss_mask))


def demonstration_prompts(spec: TaskSpec, layout: VocabLayout, episodes: Sequence[Mapping], max_tokens: int,
                          batch_size: int, rng: np.random.Generator) -> TokenSequence:
    """[B, P] prompts: each row the end of an episode drawn from `episodes`, left-padded to one length.

    The episode's end is where the paper takes evaluation prompts from (a successful finish); rows draw
    different episodes so a batch of rollouts is not conditioned on one demonstration only. Padding goes
    in front, so every demonstration ends right where its row's episode begins, as in training (the
    ALiBi distances between the two are then those of a training sequence).
    """
    if not len(episodes):
        raise ValueError(f"No demonstration episodes for {spec.name!r}: run `make data` or set "
                         "config.eval.prompted=False.")
    picks = rng.integers(0, len(episodes), size=batch_size)
    rows = [demonstration(spec, layout, episodes[int(i)], max_tokens) for i in picks]
    length = max(r.length for r in rows)
    patch_size = spec.patch_size
    return seq_lib.stack([seq_lib.concat([seq_lib.empty(length - r.length, patch_size), r]) for r in rows])
