"""The oracle itself, against values computed by hand."""

import math

import numpy as np
import pytest

from moe_router import reference as ref


def test_softmax_hand_computed():
    p = ref.softmax([0.0, math.log(3.0)])
    np.testing.assert_allclose(p, [0.25, 0.75], rtol=0, atol=1e-15)


def test_softmax_topk_hand_computed_renormalised():
    # exp([0, ln2, ln4, ln8]) = [1, 2, 4, 8], sum 15
    z = np.log([1.0, 2.0, 4.0, 8.0])
    ids, w = ref.softmax_topk(z, 2, norm_topk_prob=True)
    assert ids.tolist() == [3, 2]
    np.testing.assert_allclose(w, [8 / 12, 4 / 12], rtol=1e-15)
    ids, w = ref.softmax_topk(z, 2, norm_topk_prob=False)
    np.testing.assert_allclose(w, [8 / 15, 4 / 15], rtol=1e-15)


def test_ties_smaller_index_first():
    ids, w = ref.softmax_topk([1.0, 5.0, 5.0, 1.0, 5.0], 4, norm_topk_prob=False)
    assert ids.tolist() == [1, 2, 4, 0]


def test_infinities():
    ids, w = ref.softmax_topk([-np.inf, 1.0, np.inf, np.inf], 3, norm_topk_prob=False)
    assert ids.tolist() == [2, 3, 1]
    np.testing.assert_array_equal(w, [0.5, 0.5, 0.0])
    ids, w = ref.softmax_topk([-np.inf, 0.0, -np.inf], 2, norm_topk_prob=True)
    assert ids.tolist() == [1, 0]
    np.testing.assert_array_equal(w, [1.0, 0.0])


@pytest.mark.parametrize("row", [[np.nan, 1.0], [-np.inf, -np.inf]])
def test_bad_rows_raise(row):
    with pytest.raises(ValueError, match="row 0"):
        ref.softmax_topk(row, 1)
