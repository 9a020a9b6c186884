"""Golden and property tests for gato_jax.tokenizers.values (docs/TOKEN_FORMAT.md, "One id space" and "Numbers")."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gato_jax.tokenizers import values
from gato_jax.tokenizers.vocab import VocabLayout

LAYOUT = VocabLayout()
HALF_BIN = 1.0 / 1024  # Half of the bin width 2/1024.
EPS = 1e-9


def test_default_offsets_match_spec():
    assert LAYOUT.continuous_offset == 32000
    assert LAYOUT.discrete_offset == 33024
    assert LAYOUT.separator_id == 34048
    assert LAYOUT.special_offset == 34048


def test_mu_law_golden_values():
    assert values.MU == 100.0 and values.M == 256.0
    assert values.mu_law_encode(1.0) == pytest.approx(math.log(101) / math.log(25601), abs=1e-15)
    assert values.mu_law_encode(-1.0) == pytest.approx(-math.log(101) / math.log(25601), abs=1e-15)
    assert values.mu_law_encode(256.0) == pytest.approx(1.0, abs=1e-15)
    assert values.mu_law_encode(0.0) == 0.0


def test_mu_law_decode_inverts_encode():
    x = np.array([-256.0, -3.5, -1e-3, 0.0, 0.25, 1.0, 100.0])
    np.testing.assert_allclose(values.mu_law_decode(values.mu_law_encode(x)), x, rtol=1e-12, atol=1e-15)


def test_continuous_bin_edges():
    tok = lambda x: values.tokenize_continuous(np.array(x, np.float64), LAYOUT, companded=False)
    width = 2.0 / 1024
    assert tok(-1.0)[0] == 32000
    assert tok(1.0)[0] == 32000 + 1023  # The closed upper end falls into the last bin.
    assert tok(-1.0 + width)[0] == 32001
    assert tok(-1.0 + width * 0.999)[0] == 32000
    assert tok(0.0)[0] == 32512
    assert tok(-1e-9)[0] == 32511
    assert list(tok([-5.0, 5.0])) == [32000, 33023]  # Clipped.


def test_companded_bins_clip_beyond_m():
    ids = values.tokenize_continuous([-1e6, -256.0, 256.0, 1e6], LAYOUT, companded=True)
    assert list(ids) == [32000, 32000, 33023, 33023]


def test_bin_centres():
    ids = np.array([32000, 32512, 33023])
    np.testing.assert_array_equal(
        values.detokenize_continuous(ids, LAYOUT, companded=False), [-1 + HALF_BIN, HALF_BIN, 1 - HALF_BIN])


def test_row_major_flattening():
    x = np.array([[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(values.tokenize_discrete(x, LAYOUT), 33024 + np.arange(1, 7))
    ids = values.tokenize_continuous(np.array([[-1.0, 1.0], [0.0, -1.0]]), LAYOUT, companded=False)
    np.testing.assert_array_equal(ids, [32000, 33023, 32512, 32000])


def test_discrete_offsets_and_small_layout():
    small = VocabLayout(text_size=100, num_continuous_bins=8, num_discrete=4)
    assert list(values.tokenize_discrete([0, 3], small)) == [108, 111]
    assert list(values.tokenize_continuous([-1.0, 1.0], small, companded=False)) == [100, 107]
    assert list(values.tokenize_discrete([0, 1023], LAYOUT)) == [33024, 34047]


def test_discrete_accepts_whole_floats_and_bools():
    assert list(values.tokenize_discrete(np.array([2.0, 0.0]), LAYOUT)) == [33026, 33024]
    assert list(values.tokenize_discrete(np.array([True, False]), LAYOUT)) == [33025, 33024]


finite = st.floats(-1e5, 1e5, allow_nan=False, allow_infinity=False)


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=5), elements=finite))
def test_companded_round_trip_within_half_bin(x):
    ids = values.tokenize_continuous(x, LAYOUT, companded=True)
    assert ids.dtype == np.int32 and ids.shape == (x.size,)
    assert np.all((ids >= 32000) & (ids < 33024))
    decoded = values.detokenize_continuous(ids, LAYOUT, companded=True)
    err = np.abs(values.mu_law_encode(decoded) - np.clip(values.mu_law_encode(x.ravel()), -1, 1))
    assert np.all(err <= HALF_BIN + 1e-6)


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=2, max_side=8), elements=st.floats(-1, 1)))
def test_uncompanded_round_trip_within_half_bin(x):
    decoded = values.detokenize_continuous(values.tokenize_continuous(x, LAYOUT, companded=False), LAYOUT,
                                           companded=False)
    assert decoded.dtype == np.float32
    assert np.all(np.abs(decoded - x.ravel()) <= HALF_BIN + EPS)


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.int64, hnp.array_shapes(max_dims=3, max_side=5), elements=st.integers(0, 1023)))
def test_discrete_round_trip_exact(x):
    ids = values.tokenize_discrete(x, LAYOUT)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(values.detokenize_discrete(ids, LAYOUT), x.ravel())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_continuous_rejects_non_finite(bad):
    with pytest.raises(ValueError, match="'joint_vel'.*finite"):
        values.tokenize_continuous([0.0, bad], LAYOUT, field="joint_vel")


def test_continuous_rejects_non_numeric():
    with pytest.raises(ValueError, match="'obs'"):
        values.tokenize_continuous(["a"], LAYOUT, field="obs")


@pytest.mark.parametrize("bad", [[-1], [1024], [1.5], [np.nan], ["x"]])
def test_discrete_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="'buttons'"):
        values.tokenize_discrete(np.array(bad), LAYOUT, field="buttons")


@pytest.mark.parametrize("ids", [[31999], [33024], [5]])
def test_detokenize_continuous_rejects_foreign_ids(ids):
    with pytest.raises(ValueError, match="'torque'.*continuous"):
        values.detokenize_continuous(ids, LAYOUT, field="torque")


@pytest.mark.parametrize("ids", [[33023], [34048], [33030.0]])
def test_detokenize_discrete_rejects_foreign_ids(ids):
    with pytest.raises(ValueError, match="'buttons'"):
        values.detokenize_discrete(np.array(ids), LAYOUT, field="buttons")
