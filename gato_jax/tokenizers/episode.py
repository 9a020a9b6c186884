"""Episodes, timesteps, text and captions to TokenSequences (docs/TOKEN_FORMAT.md, "Timesteps and episodes").

Array key: N = timesteps, K = tokens of one field per timestep, T = tokens, P = patch pixels.

A timestep is: observation tokens in `spec.ordered_observation()` order (text, image patches, discrete,
continuous; by name within a kind), the separator `|`, then action tokens in `spec.ordered_action()` order.
Position conventions chosen here (the paper is silent on the last two):
- observation tokens get local positions 0..n-1 within their timestep; every action token gets
  `ACTION_LOCAL_POS`;
- the separator gets `NO_LOCAL_POS`: it is neither observation nor action, and giving it a position of its
  own would need another row in the local-position table for no information (its id already says what it is);
- text (in text and caption sequences) gets `NO_LOCAL_POS`; caption image patches get 0..n-1 like an
  observation image, so the patch embedding sees the same positions in both uses.
`loss_mask` is True on action tokens only in control episodes (observation text is context, not target), and
on text tokens plus the final `<eos>` in text and caption sequences.

Observation TEXT fields hold already-tokenized, already-padded int ids of shape (max_tokens,): tokenizing
text is the data pipeline's job (it owns the TextTokenizer), this module only lays ids out.

With `spec.frame_history` > 1 a grayscale frame arrives with the frames before it stacked in its channels
(`with_frame_history` for stored steps, `FrameHistory` for a rollout's observations); an unstacked frame
is refused by its shape.

Episodes are tokenized field by field over all N steps at once: per-timestep metadata (modality, local
position, patch position, loss) is built once for a [T_step] template and tiled, so cost is a few array
copies regardless of N. Unknown keys in the observation / action dicts are ignored (datasets carry extras).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np

from gato_jax.tokenizers import images as images_lib
from gato_jax.tokenizers import values as values_lib
from gato_jax.tokenizers.sequence import (
    ACTION_LOCAL_POS,
    IMAGE_CHANNELS,
    MAX_LOCAL_POSITIONS,
    NO_LOCAL_POS,
    Modality,
    TokenSequence,
    patch_dim_for,
)
from gato_jax.tokenizers.spec import FieldKind, FieldSpec, TaskSpec
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.vocab import VocabLayout

_MODALITY = {
    FieldKind.TEXT: Modality.TEXT,
    FieldKind.IMAGE: Modality.IMAGE,
    FieldKind.DISCRETE: Modality.DISCRETE,
    FieldKind.CONTINUOUS: Modality.CONTINUOUS,
}


class _Block(NamedTuple):
    """One field's tokens over all N steps; modality and patch positions are the same every step."""

    tokens_NxK: np.ndarray  # int32
    modality: int
    patches_NxKxP: np.ndarray | None = None  # uint8, images only
    patch_pos_Kx4: np.ndarray | None = None  # int32, images only


# ---------------------------------------------------------------------------------------------------------
# Field checks and per-field blocks.


def _field_array(values: Mapping, field: FieldSpec, role: str) -> np.ndarray:
    if field.name not in values:
        raise ValueError(f"{role} field {field.name!r} is missing; got fields {sorted(values)}.")
    return np.asarray(values[field.name])


def _check_shape(x: np.ndarray, field: FieldSpec, n: int) -> None:
    expected = (n, *field.shape)
    if x.shape != expected:
        raise ValueError(
            f"Field {field.name!r}: expected stacked shape {expected} (N steps x the spec's {field.shape}), "
            f"got {x.shape}."
        )


def _check_num_values(field: FieldSpec, layout: VocabLayout) -> None:
    if field.num_values > layout.num_discrete:
        raise ValueError(
            f"Field {field.name!r} has num_values={field.num_values} but the layout holds only "
            f"{layout.num_discrete} discrete values; enlarge VocabLayout.num_discrete."
        )


def _discrete_ids(x: np.ndarray, field: FieldSpec, layout: VocabLayout) -> np.ndarray:
    """Discrete ids [x.size], after checking values against the field's own num_values."""
    _check_num_values(field, layout)
    ints = values_lib.as_integers(x, field.name)
    if ints.size and (ints.min() < 0 or ints.max() >= field.num_values):
        bad = ints[(ints < 0) | (ints >= field.num_values)][0]
        raise ValueError(f"Field {field.name!r}: value {bad} is outside [0, {field.num_values}) (num_values).")
    return values_lib.tokenize_discrete(ints, layout, field.name)


def _continuous_ids(x: np.ndarray, field: FieldSpec, layout: VocabLayout) -> np.ndarray:
    scaled = values_lib.as_finite_float(x, field.name) / field.scale
    return values_lib.tokenize_continuous(scaled, layout, companded=field.companded, field=field.name)


def _image_block(x: np.ndarray, field: FieldSpec, layout: VocabLayout, n: int, patch_size: int) -> _Block:
    images_lib.check_images(x, patch_size, field.name, batched=True)
    _check_shape(x, field, n)
    patches = images_lib.patchify(images_lib.to_image_channels(x), patch_size)
    placeholder = np.full(patches.shape[:2], layout.special_id("<image>"), np.int32)
    height, width, _ = field.shape
    return _Block(placeholder, Modality.IMAGE, patches, images_lib.patch_intervals(height, width, patch_size))


def _field_block(x: np.ndarray, field: FieldSpec, layout: VocabLayout, n: int, patch_size: int) -> _Block:
    """Tokens of one field for all N steps."""
    if field.kind == FieldKind.IMAGE:
        return _image_block(x, field, layout, n, patch_size)
    _check_shape(x, field, n)
    if field.kind == FieldKind.TEXT:
        ids = values_lib.check_id_range(x, 0, layout.text_size, "text", field.name).astype(np.int32)
    elif field.kind == FieldKind.DISCRETE:
        ids = _discrete_ids(x, field, layout)
    else:
        ids = _continuous_ids(x, field, layout)
    return _Block(ids.reshape(n, field.size), _MODALITY[field.kind])


def _blocks(fields: list[FieldSpec], values: Mapping, role: str, layout: VocabLayout, n: int,
            patch_size: int) -> list[_Block]:
    return [_field_block(_field_array(values, f, role), f, layout, n, patch_size) for f in fields]


# ---------------------------------------------------------------------------------------------------------
# Assembly.


def _template(blocks: list[_Block], n_obs_blocks: int) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Block widths and the per-timestep [T_step] modality, local position and loss mask."""
    widths = [b.tokens_NxK.shape[1] for b in blocks]
    n_obs = sum(widths[:n_obs_blocks])
    if n_obs > MAX_LOCAL_POSITIONS:
        raise ValueError(
            f"An observation of {n_obs} tokens exceeds the {MAX_LOCAL_POSITIONS} local positions; use "
            "larger patches or smaller frames."
        )
    t = sum(widths)
    modality_T = np.concatenate([np.full(w, b.modality, np.int32) for b, w in zip(blocks, widths)])
    local_T = np.concatenate([np.arange(n_obs), [NO_LOCAL_POS], np.full(t - n_obs - 1, ACTION_LOCAL_POS)])
    loss_T = np.arange(t) > n_obs  # Everything after the separator is an action token.
    return widths, modality_T, local_T.astype(np.int32), loss_T


def _assemble(blocks: list[_Block], n_obs_blocks: int, n: int, patch_size: int) -> TokenSequence:
    """Concatenates blocks along the timestep axis, then flattens N timesteps into one sequence."""
    widths, modality_T, local_T, loss_T = _template(blocks, n_obs_blocks)
    t = len(modality_T)
    patches_NxTxP = np.zeros((n, t, patch_dim_for(patch_size)), np.uint8)
    patch_pos_Tx4 = np.zeros((t, 4), np.int32)
    start = 0
    for block, width in zip(blocks, widths):
        if block.patches_NxKxP is not None:
            patches_NxTxP[:, start:start + width] = block.patches_NxKxP
            patch_pos_Tx4[start:start + width] = block.patch_pos_Kx4
        start += width

    def tile(a_T: np.ndarray) -> np.ndarray:  # The same metadata for every timestep: [T_step, ...] -> [N*T_step, ...].
        return np.tile(a_T, (n,) + (1,) * (a_T.ndim - 1))

    return TokenSequence(
        tokens=np.concatenate([b.tokens_NxK for b in blocks], axis=1).reshape(n * t).astype(np.int32),
        modality=tile(modality_T),
        local_pos=tile(local_T),
        patches=patches_NxTxP.reshape(n * t, -1),
        patch_pos=tile(patch_pos_Tx4),
        loss_mask=tile(loss_T),
        segment_ids=np.ones(n * t, np.int32),
    )


def _tokenize(spec: TaskSpec, layout: VocabLayout, observation: Mapping, action: Mapping | None,
              n: int) -> TokenSequence:
    fields = [_as_stacked(f, spec) for f in spec.ordered_observation()]
    blocks = _blocks(fields, observation, "Observation", layout, n, spec.patch_size)
    n_obs_blocks = len(blocks)
    blocks.append(_Block(np.full((n, 1), layout.separator_id, np.int32), Modality.SEPARATOR))
    if action is not None:
        blocks += _blocks(spec.ordered_action(), action, "Action", layout, n, spec.patch_size)
    return _assemble(blocks, n_obs_blocks, n, spec.patch_size)


# ---------------------------------------------------------------------------------------------------------
# Frame history.


def _stacks_history(field: FieldSpec, spec: TaskSpec) -> bool:
    return field.kind == FieldKind.IMAGE and field.shape[-1] == 1 and spec.frame_history > 1


def _as_stacked(field: FieldSpec, spec: TaskSpec) -> FieldSpec:
    """The field as the tokenizer takes it: a grayscale frame with history arrives stacked in the channels,
    so a caller that forgot `with_frame_history` gets a shape error, not silently replicated frames."""
    if not _stacks_history(field, spec):
        return field
    return dataclasses.replace(field, shape=(*field.shape[:2], IMAGE_CHANNELS))


def with_frame_history(spec: TaskSpec, steps: Mapping, lead: int = 0) -> Mapping:
    """Stored steps (the `tokenize_episode` layout) with each grayscale frame's history in its channels
    (`images.frame_history`, `spec.frame_history` frames); the first `lead` steps only feed that history
    and are dropped from every field. Identity (but for `lead`) when `spec.frame_history` is 1."""
    stacked = {f.name for f in spec.observation if _stacks_history(f, spec)}
    if not stacked and not lead:
        return steps
    observation = {k: (images_lib.frame_history(v, spec.frame_history, lead) if k in stacked
                       else np.asarray(v)[lead:]) for k, v in steps["observation"].items()}
    return {"observation": observation, "action": {k: np.asarray(v)[lead:] for k, v in steps["action"].items()}}


def tokenize_window(spec: TaskSpec, layout: VocabLayout, read_steps: Callable[[int, int], Mapping], start: int,
                    stop: int) -> TokenSequence:
    """Steps start:stop of one episode, tokenized; `read_steps(lo, hi)` returns steps lo:hi in the
    `tokenize_episode` layout. Frame histories read up to `spec.frame_history - 1` steps before `start`
    (never before the episode's first), so every cut of an episode shows the frames a rollout would."""
    lead = min(start, spec.frame_history - 1)
    return tokenize_episode(spec, layout, with_frame_history(spec, read_steps(start - lead, stop), lead))


class FrameHistory:
    """A rollout's frame history, row by row: the last `spec.frame_history` frames of each row's episode,
    stacked as `with_frame_history` stacks stored episodes (a new episode starts from its first frame)."""

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.fields = [f.name for f in spec.observation if _stacks_history(f, spec)]
        self.recent: dict[str, np.ndarray] = {}  # Field -> [B, history, H, W, 1], oldest first.
        # Each channel's index into the oldest-first window of the last `frame_history` frames.
        self.channel_C = spec.frame_history - 1 - images_lib.channel_lags(spec.frame_history)

    def __call__(self, observations: list[Mapping], reset_B: np.ndarray) -> list[Mapping]:
        """The rows' observations with stacked frames; `reset_B` marks rows whose episode starts here.
        Without history they pass through untouched. Runs at every env step, so all rows move at once."""
        if not self.fields:
            return observations
        out = [dict(obs) for obs in observations]
        for name in self.fields:
            frames_Bx1xHxWx1 = np.stack([np.asarray(obs[name]) for obs in observations])[:, None]
            recent = self.recent.get(name)
            if recent is None or len(recent) != len(observations):  # First call, or another batch of envs.
                recent = np.repeat(frames_Bx1xHxWx1, self.spec.frame_history, axis=1)
            else:
                recent = np.concatenate([recent[:, 1:], frames_Bx1xHxWx1], axis=1)
                recent[reset_B] = frames_Bx1xHxWx1[reset_B]
            self.recent[name] = recent
            stacked_BxHxWxC = np.moveaxis(recent[..., 0][:, self.channel_C], 1, -1)
            for row, frame in zip(out, stacked_BxHxWxC):
                row[name] = frame
        return out


# ---------------------------------------------------------------------------------------------------------
# Control episodes.


def _one_step(fields: list[FieldSpec], values: Mapping) -> dict:
    """Adds a leading N=1 axis to the spec's fields so a single timestep takes the episode path."""
    return {f.name: np.asarray(values[f.name])[None] for f in fields if f.name in values}


def tokenize_timestep(spec: TaskSpec, layout: VocabLayout, observation: Mapping,
                      action: Mapping | None = None) -> TokenSequence:
    """One timestep: observation, `|`, action (or just observation and `|` when action is None)."""
    obs = _one_step(spec.ordered_observation(), observation)
    act = None if action is None else _one_step(spec.ordered_action(), action)
    return _tokenize(spec, layout, obs, act, 1)


def observation_tokens(spec: TaskSpec, layout: VocabLayout, observation: Mapping) -> TokenSequence:
    """A rollout's prompt for the next action: one observation followed by the separator."""
    return tokenize_timestep(spec, layout, observation, None)


def _num_steps(spec: TaskSpec, observation: Mapping, action: Mapping) -> int:
    for field, values in [*((f, observation) for f in spec.ordered_observation()),
                          *((f, action) for f in spec.ordered_action())]:
        if field.name in values:
            shape = np.shape(values[field.name])
            if not shape:
                raise ValueError(f"Field {field.name!r}: episodes need stacked arrays [N, ...], got a scalar.")
            return shape[0]
    raise ValueError(f"Episode has none of the fields of task {spec.name!r}.")


def tokenize_episode(spec: TaskSpec, layout: VocabLayout, steps: Mapping) -> TokenSequence:
    """All timesteps in time order. `steps` = {"observation": {name: [N, ...]}, "action": {name: [N, ...]}}."""
    for key in ("observation", "action"):
        if key not in steps:
            raise ValueError(f"Episode steps need a dict of stacked field arrays under {key!r}.")
        if not isinstance(steps[key], Mapping):
            raise TypeError(f"steps[{key!r}] must map field names to arrays, got {type(steps[key]).__name__}.")
    observation, action = steps["observation"], steps["action"]
    return _tokenize(spec, layout, observation, action, _num_steps(spec, observation, action))


def action_token_ranges(spec: TaskSpec, layout: VocabLayout) -> list[tuple[int, int]]:
    """The valid id range [lo, hi) of each action token in order, for constrained sampling."""
    ranges = []
    for field in spec.ordered_action():
        if field.kind == FieldKind.DISCRETE:
            _check_num_values(field, layout)
            rng = (layout.discrete_offset, layout.discrete_offset + field.num_values)
        else:
            rng = layout.continuous_range
        ranges.extend([rng] * field.size)
    return ranges


def _decode_field(ids: np.ndarray, field: FieldSpec, layout: VocabLayout) -> np.ndarray:
    if field.kind == FieldKind.CONTINUOUS:
        values = values_lib.detokenize_continuous(ids, layout, companded=field.companded, field=field.name)
        return (values * np.float32(field.scale)).astype(np.float32).reshape(field.shape)
    values = values_lib.detokenize_discrete(ids, layout, field.name)
    if values.size and values.max() >= field.num_values:
        raise ValueError(f"Field {field.name!r}: decoded value {values.max()} >= num_values={field.num_values}.")
    return values.reshape(field.shape)


def decode_action(spec: TaskSpec, layout: VocabLayout, ids) -> dict[str, np.ndarray]:
    """Sampled action ids (in `ordered_action` order) -> {field name: environment value of field.shape}."""
    ids = np.asarray(ids).ravel()
    if ids.size != spec.action_tokens:
        raise ValueError(f"Task {spec.name!r} has {spec.action_tokens} action tokens, got {ids.size} ids.")
    out, start = {}, 0
    for field in spec.ordered_action():
        out[field.name] = _decode_field(ids[start:start + field.size], field, layout)
        start += field.size
    return out


# ---------------------------------------------------------------------------------------------------------
# Text and captions.


def _sequence(tokens, modality, local_pos, loss_mask, patch_size: int, patches=None, patch_pos=None,
              patch_start: int = 0) -> TokenSequence:
    """Builds a one-segment TokenSequence from per-token lists; patches fill rows from `patch_start`."""
    t = len(tokens)
    patches_TxP = np.zeros((t, patch_dim_for(patch_size)), np.uint8)
    patch_pos_Tx4 = np.zeros((t, 4), np.int32)
    if patches is not None:
        patches_TxP[patch_start:patch_start + len(patches)] = patches
        patch_pos_Tx4[patch_start:patch_start + len(patches)] = patch_pos
    return TokenSequence(
        tokens=np.asarray(tokens, np.int32), modality=np.asarray(modality, np.int32),
        local_pos=np.asarray(local_pos, np.int32), patches=patches_TxP, patch_pos=patch_pos_Tx4,
        loss_mask=np.asarray(loss_mask, bool), segment_ids=np.ones(t, np.int32))


def _text_ids(tokenizer: TextTokenizer, layout: VocabLayout, text: str) -> list[int]:
    """`<bos>` text `<eos>` ids."""
    tokenizer.check_layout(layout)
    return [layout.special_id("<bos>"), *tokenizer.encode(text), layout.special_id("<eos>")]


def tokenize_text(tokenizer: TextTokenizer, layout: VocabLayout, text: str, patch_size: int = 16) -> TokenSequence:
    """`<bos>` text `<eos>`; the loss covers the text and `<eos>` (the model learns to stop)."""
    ids = _text_ids(tokenizer, layout, text)
    k = len(ids) - 2
    modality = [Modality.SPECIAL, *[Modality.TEXT] * k, Modality.SPECIAL]
    return _sequence(ids, modality, [NO_LOCAL_POS] * len(ids), [False, *[True] * (k + 1)], patch_size)


def tokenize_caption(tokenizer: TextTokenizer, layout: VocabLayout, image, caption: str,
                     patch_size: int = 16) -> TokenSequence:
    """`<image>` patches `</image>` `<bos>` caption `<eos>`; loss on the caption and `<eos>` only."""
    pixels = images_lib.image_to_patch_pixels(image, patch_size)
    n = len(pixels)
    if n > MAX_LOCAL_POSITIONS:
        raise ValueError(f"A caption image of {n} patches exceeds {MAX_LOCAL_POSITIONS} local positions; resize it.")
    image_id, text_ids = layout.special_id("<image>"), _text_ids(tokenizer, layout, caption)
    k = len(text_ids) - 2
    tokens = [image_id, *[image_id] * n, layout.special_id("</image>"), *text_ids]
    modality = [Modality.SPECIAL, *[Modality.IMAGE] * n, Modality.SPECIAL, Modality.SPECIAL,
                *[Modality.TEXT] * k, Modality.SPECIAL]
    local_pos = [NO_LOCAL_POS, *range(n), *[NO_LOCAL_POS] * (k + 3)]
    loss = [False] * (n + 3) + [True] * (k + 1)
    intervals = images_lib.patch_intervals(*np.shape(image)[:2], patch_size)
    return _sequence(tokens, modality, local_pos, loss, patch_size, pixels, intervals, patch_start=1)
