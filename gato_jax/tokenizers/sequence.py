"""TokenSequence: the one flat sequence every modality becomes, and the model's only input.

Array key: T = sequence length, P = patch pixels (patch_size**2 * IMAGE_CHANNELS). Every field has the
same leading shape ([T] for one sequence, [B, T] for a batch), so batching, slicing and sharding treat
all fields alike.

Conventions (fixed here, read everywhere):
- `tokens[t]` is an id of the VocabLayout. At image-patch positions it is `layout.special_id("<image>")`
  as a placeholder; the model embeds `patches[t]` there instead and never predicts it.
- `loss_mask[t]` is True when token t is a training target, i.e. predicted from position t-1. Only text
  and the logged agent's action tokens are targets (docs/TOKEN_FORMAT.md, "Timesteps and episodes").
- `local_pos[t]`: observation tokens 0..n-1 within their timestep; all action tokens share
  `ACTION_LOCAL_POS`; -1 where no local position applies (text, padding, separators).
- `patch_pos[t]` = (row_lo, row_hi, col_lo, col_hi): the patch's row and column intervals on the
  `PATCH_POS_BUCKETS`-entry table, hi exclusive; zeros elsewhere.
- `patches[t]`: raw uint8 pixels (compact); `normalize_patches` gives the model's [-1, 1]/sqrt(16) floats.
- `segment_ids[t]`: 0 for padding; tokens attend only within their own segment, causally. A prompt and
  the episode it conditions share a segment; packed text examples get distinct segments.
"""
from __future__ import annotations

import enum
from typing import NamedTuple

import numpy as np

IMAGE_CHANNELS = 3  # Grayscale frames are replicated so every patch has the same width.
PATCH_POS_BUCKETS = 128  # Entries in the row and column patch-position tables [A].
MAX_LOCAL_POSITIONS = 512  # Observation tokens per timestep the local-position table can hold.
ACTION_LOCAL_POS = MAX_LOCAL_POSITIONS  # One shared local position id for all action tokens [A].
NO_LOCAL_POS = -1


class Modality(enum.IntEnum):
    """What a position holds; drives embedding choice, loss splits and valid-id masks."""

    PAD = 0
    TEXT = 1
    IMAGE = 2
    DISCRETE = 3
    CONTINUOUS = 4
    SEPARATOR = 5
    SPECIAL = 6  # <bos>, <eos>, <image>/</image> boundaries.


class TokenSequence(NamedTuple):
    """Fixed-length arrays describing one sequence (or a batch with a leading axis)."""

    tokens: np.ndarray  # int32 [..., T]
    modality: np.ndarray  # int32 [..., T], Modality values
    local_pos: np.ndarray  # int32 [..., T]
    patches: np.ndarray  # uint8 [..., T, P]
    patch_pos: np.ndarray  # int32 [..., T, 4]
    loss_mask: np.ndarray  # bool [..., T]
    segment_ids: np.ndarray  # int32 [..., T]

    @property
    def length(self) -> int:
        return self.tokens.shape[-1]

    @property
    def patch_dim(self) -> int:
        return self.patches.shape[-1]


def patch_dim_for(patch_size: int) -> int:
    return patch_size * patch_size * IMAGE_CHANNELS


def empty(length: int, patch_size: int = 16) -> TokenSequence:
    """An all-padding sequence of `length` positions."""
    return TokenSequence(
        tokens=np.zeros((length,), np.int32),
        modality=np.full((length,), Modality.PAD, np.int32),
        local_pos=np.full((length,), NO_LOCAL_POS, np.int32),
        patches=np.zeros((length, patch_dim_for(patch_size)), np.uint8),
        patch_pos=np.zeros((length, 4), np.int32),
        loss_mask=np.zeros((length,), bool),
        segment_ids=np.zeros((length,), np.int32),
    )


def concat(parts: list[TokenSequence]) -> TokenSequence:
    """Joins sequences end to end along the token axis."""
    if not parts:
        raise ValueError("concat needs at least one TokenSequence.")
    return TokenSequence(*(np.concatenate(fields, axis=0) for fields in zip(*parts)))


def slice_tokens(seq: TokenSequence, start: int, stop: int) -> TokenSequence:
    return TokenSequence(*(field[start:stop] for field in seq))


def pad_to(seq: TokenSequence, length: int) -> TokenSequence:
    """Right-pads with padding positions (segment 0, no loss); errors if `seq` is longer."""
    if seq.length > length:
        raise ValueError(f"Sequence of {seq.length} tokens does not fit in {length}; cut it first.")
    if seq.length == length:
        return seq
    return concat([seq, empty(length - seq.length, patch_size=int(np.sqrt(seq.patch_dim // IMAGE_CHANNELS)))])


def with_segment(seq: TokenSequence, segment_id: int) -> TokenSequence:
    """Assigns every non-padding position to `segment_id`."""
    segment = np.where(seq.modality == Modality.PAD, 0, segment_id).astype(np.int32)
    return seq._replace(segment_ids=segment)


def stack(seqs: list[TokenSequence]) -> TokenSequence:
    """Batches equal-length sequences along a new leading axis."""
    return TokenSequence(*(np.stack(fields, axis=0) for fields in zip(*seqs)))


def normalize_patches(patches_u8, patch_size: int = 16):
    """uint8 pixels -> [-1, 1], divided by sqrt(patch_size) (docs/TOKEN_FORMAT.md, "Images"). numpy or jax."""
    return (patches_u8.astype("float32") / 127.5 - 1.0) / float(np.sqrt(patch_size))
