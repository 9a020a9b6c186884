"""Task specs: which fields a task's observations and actions have, and how each is tokenized.

One spec per task drives both directions: tokenizing dataset episodes for training and decoding
sampled action tokens back into environment actions during rollouts. Specs are saved with
datasets and checkpoints (`to_json`), so a rollout always decodes with the spec it trained on.
"""
from __future__ import annotations

import dataclasses
import enum
import json

MAX_FRAME_HISTORY = 3  # One frame per image channel (sequence.IMAGE_CHANNELS).


class FieldKind(str, enum.Enum):
    TEXT = "text"
    IMAGE = "image"
    DISCRETE = "discrete"
    CONTINUOUS = "continuous"


# Observation tokens are laid out by kind in this order, then by field name (docs/TOKEN_FORMAT.md).
KIND_ORDER = (FieldKind.TEXT, FieldKind.IMAGE, FieldKind.DISCRETE, FieldKind.CONTINUOUS)


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One observation or action field.

    shape: IMAGE (H, W, C) with C in {1, 3}, uint8, H and W multiples of the patch size;
      DISCRETE / CONTINUOUS the value tensor's shape (() for a scalar); TEXT (max_tokens,).
    num_values: DISCRETE only; valid values are 0..num_values-1 (e.g. Atari's action count).
    companded: CONTINUOUS only; mu-law before binning (observations) or not (actions already in
      [-1, 1], docs/TOKEN_FORMAT.md "Numbers").
    scale: CONTINUOUS only; values are divided by it before tokenizing and multiplied back after
      decoding, mapping an action box such as [-3, 3] onto [-1, 1].
    """

    name: str
    kind: FieldKind
    shape: tuple[int, ...] = ()
    num_values: int = 0
    companded: bool = True
    scale: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "kind", FieldKind(self.kind))
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.kind == FieldKind.DISCRETE and self.num_values <= 0:
            raise ValueError(f"Discrete field {self.name!r} needs num_values > 0.")
        if self.kind == FieldKind.IMAGE and (len(self.shape) != 3 or self.shape[-1] not in (1, 3)):
            raise ValueError(f"Image field {self.name!r} needs shape (H, W, 1|3), got {self.shape}.")
        if self.scale <= 0:
            raise ValueError(f"Field {self.name!r} needs scale > 0, got {self.scale}.")

    @property
    def size(self) -> int:
        """Number of scalar values (row-major flattening) for DISCRETE / CONTINUOUS."""
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A control task: its observation fields, action fields and image patching."""

    name: str  # e.g. "atari/pong", "control/reacher".
    observation: tuple[FieldSpec, ...]
    action: tuple[FieldSpec, ...]
    patch_size: int = 16
    # Grayscale frames fill the patch's IMAGE_CHANNELS with this many consecutive frames (1 replicates the
    # current one; `tokenizers.images.frame_history`). Like `patch_size`, how this pipeline reads stored
    # frames, not a property of them, so it is not compared with a dataset's spec.
    frame_history: int = 1

    def __post_init__(self):
        object.__setattr__(self, "observation", tuple(self.observation))
        object.__setattr__(self, "action", tuple(self.action))
        if not self.action:
            raise ValueError(f"Task {self.name!r} has no action fields.")
        for field in self.action:
            if field.kind not in (FieldKind.DISCRETE, FieldKind.CONTINUOUS):
                raise ValueError(f"Action field {field.name!r} of {self.name!r} must be discrete or continuous.")
        if not 1 <= self.frame_history <= MAX_FRAME_HISTORY:
            raise ValueError(f"Task {self.name!r}: frame_history={self.frame_history} must be 1 to "
                             f"{MAX_FRAME_HISTORY} (one frame per image channel); set config.data.frame_history.")
        for field in self.observation:
            if field.kind == FieldKind.IMAGE and any(d % self.patch_size for d in field.shape[:2]):
                raise ValueError(
                    f"Image field {field.name!r} of {self.name!r} has shape {field.shape}; both sides must be "
                    f"multiples of patch_size={self.patch_size}: resize the frames."
                )

    def ordered_observation(self) -> list[FieldSpec]:
        """Observation fields in token order: by kind (text, image, discrete, continuous), then name."""
        return sorted(self.observation, key=lambda f: (KIND_ORDER.index(f.kind), f.name))

    def ordered_action(self) -> list[FieldSpec]:
        """Action fields in token order: by kind (discrete before continuous), then name."""
        return sorted(self.action, key=lambda f: (KIND_ORDER.index(f.kind), f.name))

    def field_tokens(self, field: FieldSpec) -> int:
        if field.kind == FieldKind.IMAGE:
            h, w, _ = field.shape
            return (h // self.patch_size) * (w // self.patch_size)
        if field.kind == FieldKind.TEXT:
            return field.shape[0]
        return field.size

    @property
    def observation_tokens(self) -> int:
        return sum(self.field_tokens(f) for f in self.observation)

    @property
    def action_tokens(self) -> int:
        return sum(self.field_tokens(f) for f in self.action)

    @property
    def tokens_per_timestep(self) -> int:
        """Observation tokens + the separator + action tokens."""
        return self.observation_tokens + 1 + self.action_tokens

    def to_json(self) -> str:
        """JSON of every field; `frame_history` only when not 1, so specs (and the caches and datasets keyed
        by them) written before it existed read the same."""
        raw = dataclasses.asdict(self)
        if self.frame_history == 1:
            del raw["frame_history"]
        return json.dumps(raw, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TaskSpec:
        raw = json.loads(text)
        fields = lambda items: tuple(FieldSpec(**{**f, "shape": tuple(f["shape"])}) for f in items)
        return cls(name=raw["name"], observation=fields(raw["observation"]), action=fields(raw["action"]),
                   patch_size=raw["patch_size"], frame_history=raw.get("frame_history", 1))
