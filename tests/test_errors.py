"""Bad input: a clear TypeError/ValueError naming the argument, never a crash."""

import numpy as np
import pytest

import moe_router as mr

Z = np.zeros((4, 16), np.float32)


@pytest.mark.parametrize(
    "top_k, exc, msg",
    [
        (2.0, TypeError, "top_k must be an int, got float"),
        (True, TypeError, "top_k must be an int, got bool"),
        ("8", TypeError, "top_k must be an int, got str"),
        (None, TypeError, "top_k must be an int, got NoneType"),
        (0, ValueError, "top_k must be >= 1, got top_k=0"),
        (-3, ValueError, "top_k must be >= 1, got top_k=-3"),
        (17, ValueError, "top_k must be <= num_experts=16, got top_k=17"),
    ],
)
def test_bad_top_k(any_path, top_k, exc, msg):
    with pytest.raises(exc, match=msg):
        mr.route(Z, top_k)
    with pytest.raises(exc, match=msg):
        mr.route_into(Z, top_k, mr.RouterOutput.empty())
    with pytest.raises(exc, match=msg):
        mr.Router(num_experts=16, top_k=top_k)


def test_numpy_integer_top_k_accepted(any_path):
    assert mr.route(Z, np.int64(3)).top_k == 3


@pytest.mark.parametrize(
    "num_experts, exc, msg",
    [
        (0, ValueError, "num_experts must be >= 1"),
        (8.0, TypeError, "num_experts must be an int"),
    ],
)
def test_bad_router_num_experts(num_experts, exc, msg):
    with pytest.raises(exc, match=msg):
        mr.Router(num_experts=num_experts, top_k=1)


@pytest.mark.parametrize(
    "logits, exc, msg",
    [
        (np.zeros((2, 8), np.int32), TypeError, "floating-point array .* got dtype int32"),
        (np.zeros((2, 8), bool), TypeError, "got dtype bool"),
        (np.zeros((2, 8), np.complex64), TypeError, "got dtype complex64"),
        ([[1, 2, 3]], TypeError, "got dtype int64"),
        ("abc", TypeError, "got dtype <U3"),
        ([object()], TypeError, "got dtype object"),
        (np.float32(1.0), ValueError, "got a 0-d array"),
        (
            np.zeros((3, 0), np.float32),
            ValueError,
            r"num_experts \(logits.shape\[-1\]\) must be >= 1",
        ),
    ],
)
def test_bad_logits(any_path, logits, exc, msg):
    with pytest.raises(exc, match=msg):
        mr.route(logits, 1)


def test_router_rejects_wrong_num_experts(any_path):
    router = mr.Router(num_experts=16, top_k=2)
    with pytest.raises(ValueError, match=r"num_experts=16\], got \(4, 15\)"):
        router(np.zeros((4, 15), np.float32))
    with pytest.raises(TypeError, match="out must be a RouterOutput"):
        router(Z, out=(np.zeros(8), np.zeros(8)))


@pytest.mark.parametrize(
    "row_values, msg",
    [
        ([np.nan] + [0.0] * 15, "row 2 contains NaN"),
        ([0.0] * 15 + [np.nan], "row 2 contains NaN"),  # in the scalar tail
        ([np.inf] * 3 + [np.nan] + [0.0] * 12, "row 2 contains NaN"),  # +inf path
        ([-np.inf] * 16, "row 2 is all -inf"),
        ([-np.inf] * 15 + [np.nan], "row 2 contains NaN"),
    ],
)
def test_bad_rows_name_the_row(any_path, row_values, msg):
    z = np.zeros((4, 16), np.float32)
    z[2] = row_values
    with pytest.raises(ValueError, match=msg):
        mr.route(z, 2)
    with pytest.raises(ValueError, match="1 bad row"):
        mr.route(z, 2)


def test_bad_row_index_with_leading_dims(any_path):
    z = np.zeros((2, 3, 16), np.float64)
    z[1, 2, 5] = np.nan
    with pytest.raises(ValueError, match=r"row 5 \(index \(1, 2\)\) contains NaN"):
        mr.route(z, 2)


@pytest.mark.parametrize("position", range(0, 40))
def test_nan_anywhere_in_a_row_is_found(kernel_path, position):
    # Every lane of every vector block and the scalar tail.
    z = np.zeros((3, 40), np.float32)
    z[1, position] = np.nan
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        mr.route(z, 3)
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        mr.route(z.astype(np.float64), 3)


def test_route_into_rejects_non_router_output(any_path):
    with pytest.raises(TypeError, match="out must be a RouterOutput, got tuple"):
        mr.route_into(Z, 2, (np.zeros(8, np.int32), np.zeros(8, np.float32)))


@pytest.mark.parametrize(
    "ids, weights, exc, msg",
    [
        (
            np.zeros(8, np.float32),
            np.zeros(8, np.float32),
            TypeError,
            "expert_ids must have dtype int32/uint32/int64, got float32",
        ),
        (np.zeros(8, np.int16), np.zeros(8, np.float32), TypeError, "expert_ids must have dtype"),
        (
            np.zeros(8, np.int32),
            np.zeros(8, np.float16),
            TypeError,
            "expert_weights must have dtype float32/float64, got float16",
        ),
        (np.zeros(8, np.int32), np.zeros(8, np.int32), TypeError, "expert_weights must have dtype"),
        (
            [0] * 8,
            np.zeros(8, np.float32),
            TypeError,
            "expert_ids must be a numpy.ndarray, got list",
        ),
        (
            np.zeros((8, 2), np.int32)[:, 0],
            np.zeros(8, np.float32),
            ValueError,
            "expert_ids must be C-contiguous",
        ),
        (
            np.zeros(8, np.int32),
            np.zeros((2, 8), np.float32).T,
            ValueError,
            "expert_weights must be C-contiguous",
        ),
        (np.zeros(8, np.int32), np.zeros(9, np.float32), ValueError, "same size, got 8 .* and 9"),
    ],
)
def test_bad_wrapped_buffers(ids, weights, exc, msg):
    with pytest.raises(exc, match=msg):
        mr.RouterOutput(expert_ids=ids, expert_weights=weights)


def test_read_only_buffers_rejected():
    ids = np.zeros(8, np.int32)
    ids.flags.writeable = False
    with pytest.raises(ValueError, match="expert_ids must be writeable"):
        mr.RouterOutput(expert_ids=ids, expert_weights=np.zeros(8, np.float32))


def test_overlapping_buffers_rejected(any_path):
    raw = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match="must not overlap"):
        mr.RouterOutput(expert_ids=raw.view(np.int32)[:16], expert_weights=raw[8:24])
    # Outputs overlapping the logits: the logits would be overwritten while read.
    block = np.zeros(4 * 16 + 8, np.float32)
    logits = block[:64].reshape(4, 16)
    out = mr.RouterOutput(expert_ids=np.zeros(8, np.int32), expert_weights=block[60:68])
    with pytest.raises(ValueError, match="must not overlap the logits"):
        mr.route_into(logits, 2, out)
    owned = mr.route(np.zeros((8, 16), np.float32), 2, weights_dtype=np.float32)
    with pytest.raises(ValueError, match="must not overlap the logits"):
        mr.route_into(owned.expert_weights.reshape(2, 8), 2, owned)


def test_nothing_written_past_the_outputs_on_error(any_path):
    ids = np.full(12, -1, np.int32)
    w = np.full(12, -1.0, np.float32)
    out = mr.RouterOutput(expert_ids=ids[:8], expert_weights=w[:8])
    z = np.zeros((4, 16), np.float32)
    z[3, 0] = np.nan
    with pytest.raises(ValueError, match="row 3 contains NaN"):
        mr.route_into(z, 2, out)
    assert (ids[8:] == -1).all() and (w[8:] == -1).all()


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_num_threads(bad, exc):
    with pytest.raises(exc, match="num_threads"):
        mr.route(Z, 2, num_threads=bad)
    with pytest.raises(exc, match="num_threads"):
        mr.Router(16, 2, num_threads=bad)


def test_bad_output_dtypes_for_route():
    with pytest.raises(TypeError, match="ids_dtype must be int32/uint32/int64, got float32"):
        mr.route(Z, 2, ids_dtype=np.float32)
    with pytest.raises(TypeError, match="weights_dtype must be float32/float64, got int32"):
        mr.route(Z, 2, weights_dtype=np.int32)


def test_reset_rejects_bad_sizes():
    out = mr.RouterOutput.empty()
    with pytest.raises(ValueError, match="batch must be >= 0"):
        out.reset(-1, 2)
    with pytest.raises(TypeError, match="top_k must be an int"):
        out.reset(2, 2.5)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        out.reset(2, 0)
