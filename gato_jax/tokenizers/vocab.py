"""The one id space shared by text, values and special tokens (docs/TOKEN_FORMAT.md, "One id space").

The layout is data, not constants: it is saved with every checkpoint and read back by every consumer
(trainer, rollouts, samplers), so ids can never drift between training and use. A smaller text
vocabulary (tiny configs train their own SentencePiece model) shifts every later offset with it.
"""
from __future__ import annotations

import dataclasses
import json

DEFAULT_SPECIALS = ("|", "<image>", "</image>", "<bos>", "<eos>", "<pad>")


@dataclasses.dataclass(frozen=True)
class VocabLayout:
    """Offsets and sizes of every id range: text, continuous bins, discrete values, specials."""

    text_size: int = 32000  # SentencePiece pieces occupy [0, text_size).
    num_continuous_bins: int = 1024  # Uniform bins over [-1, 1] after mu-law.
    num_discrete: int = 1024  # Integer values 0..num_discrete-1.
    specials: tuple[str, ...] = DEFAULT_SPECIALS  # Separator first, as in the paper.

    def __post_init__(self):
        for name in ("text_size", "num_continuous_bins", "num_discrete"):
            if getattr(self, name) <= 0:
                raise ValueError(f"VocabLayout.{name} must be positive, got {getattr(self, name)}.")
        if len(set(self.specials)) != len(self.specials) or "|" not in self.specials:
            raise ValueError(f"VocabLayout.specials must be unique and include '|', got {self.specials}.")
        object.__setattr__(self, "specials", tuple(self.specials))

    @property
    def continuous_offset(self) -> int:
        return self.text_size

    @property
    def discrete_offset(self) -> int:
        return self.continuous_offset + self.num_continuous_bins

    @property
    def special_offset(self) -> int:
        return self.discrete_offset + self.num_discrete

    @property
    def total_size(self) -> int:
        """Number of ids in use; the embedding table may be padded beyond it (`padded_size`)."""
        return self.special_offset + len(self.specials)

    @property
    def padded_size(self) -> int:
        """`total_size` rounded up to a multiple of 128 so the logits matmul tiles evenly."""
        return -(-self.total_size // 128) * 128

    def special_id(self, name: str) -> int:
        if name not in self.specials:
            raise KeyError(f"Unknown special token {name!r}; the layout has {self.specials}.")
        return self.special_offset + self.specials.index(name)

    @property
    def separator_id(self) -> int:
        return self.special_id("|")

    @property
    def text_range(self) -> tuple[int, int]:
        return (0, self.text_size)

    @property
    def continuous_range(self) -> tuple[int, int]:
        return (self.continuous_offset, self.discrete_offset)

    @property
    def discrete_range(self) -> tuple[int, int]:
        return (self.discrete_offset, self.special_offset)

    def __str__(self) -> str:
        """Short, for one-line errors: the three sizes (specials only when not the default)."""
        extra = "" if self.specials == DEFAULT_SPECIALS else f", specials={self.specials}"
        return (f"vocabulary(text_size={self.text_size}, num_continuous_bins={self.num_continuous_bins}, "
                f"num_discrete={self.num_discrete}{extra})")

    @classmethod
    def from_config(cls, config) -> VocabLayout:
        """The layout an experiment config asks for (`config.vocab`): the one way to build it from a config."""
        v = config.vocab
        return cls(int(v.text_size), int(v.num_continuous_bins), int(v.num_discrete))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VocabLayout:
        fields = json.loads(text)
        fields["specials"] = tuple(fields["specials"])
        return cls(**fields)
