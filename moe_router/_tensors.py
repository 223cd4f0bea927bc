"""Arrays of other libraries: torch tensors, DLPack producers, bfloat16.

The compiled core reads DLPack itself (moe_router/_dlpack.pxi): a producer's
C exchange table on the hot path, its `__dlpack__` capsules otherwise.  This
module is the Python side of it: it recognises torch tensors without
importing torch (a tensor can only exist once torch is in sys.modules),
explains what the core cannot take (another device, requires_grad, a dtype it
does not read), makes zero-copy NumPy views of anything with `__dlpack__`,
and torch views of the outputs.  torch and ml_dtypes are imported only when
the caller has passed one of their objects.
"""

from __future__ import annotations

import sys

import numpy as np

from . import _core_baseline

__all__ = ["is_torch", "asarray", "to_torch", "as_numpy_dtype", "dtype_name"]

# The floating dtypes the router reads, for messages.
LOGITS_DTYPES = "float16, bfloat16, float32 or float64"

_torch_tensor_type = None  # torch.Tensor once seen


def is_torch(obj) -> bool:
    """Whether obj is a torch tensor (torch is never imported here)."""
    global _torch_tensor_type
    t = type(obj)
    if t is _torch_tensor_type:
        return True
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(obj, torch.Tensor):
        return False
    if t is torch.Tensor:
        _torch_tensor_type = t
    return True


def dtype_name(dtype) -> str:
    """The name of a NumPy dtype, "bfloat16" for ml_dtypes' (not imported)."""
    return dtype.name


def check_torch(tensor, name: str) -> None:
    """What a torch tensor must be for moe_router to read it, as clear errors."""
    if tensor.requires_grad:
        raise TypeError(
            f"{name} requires grad: routing here is for inference; pass "
            f"{name}.detach() or run under torch.no_grad()"
        )
    device = tensor.device
    if device.type != "cpu":
        raise ValueError(
            f"{name} is a tensor on device {device}; moe_router routes on the CPU, "
            f"so move it there first ({name}.cpu()): no transfer is made for you"
        )


def asarray(obj, name: str, writeable: bool = False):
    """(array, dtype name, is_torch) with array viewing obj's memory.

    NumPy arrays are returned as they are; torch tensors and other DLPack
    producers as a zero-copy NumPy view (bfloat16 as uint16 bits, dtype name
    "bfloat16"); anything else through np.asarray (which may copy).
    ValueError for memory not on the CPU (or read-only with `writeable`),
    TypeError for a tensor requiring grad or an unreadable dtype; each names
    `name`.
    """
    if type(obj) is np.ndarray:
        return obj, obj.dtype.name, False
    torch_in = is_torch(obj)
    if torch_in and (obj.requires_grad or not obj.is_cpu):
        check_torch(obj, name)  # raises, naming the device (costly to read)
    if not isinstance(obj, np.ndarray) and hasattr(type(obj), "__dlpack__"):
        arr, dt_name, _ = _core_baseline.dlpack_view(obj, name, writeable)
        return arr, dt_name, torch_in
    try:
        arr = np.asarray(obj)
    except ValueError as e:  # ragged nested lists
        shape = " [..., num_experts]" if name == "logits" else ""
        raise ValueError(
            f"{name} must be a rectangular array{shape} (rows of equal length), "
            f"got {type(obj).__name__} NumPy cannot make one array of: {e}"
        ) from None
    if writeable and not arr.flags.writeable:
        raise ValueError(f"{name} must be writeable, got a read-only array")
    return arr, arr.dtype.name, False


def to_torch(arr: np.ndarray, dt_name: str | None = None):
    """A torch tensor sharing arr's memory (bfloat16 bits viewed as bfloat16)."""
    import torch

    if dt_name is None:
        dt_name = arr.dtype.name
    if dt_name == "bfloat16":
        return torch.from_numpy(arr.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def as_numpy_dtype(dtype, name: str) -> np.dtype:
    """np.dtype(dtype), also for a torch dtype (torch.int64 -> int64)."""
    t = type(dtype)
    if t.__name__ == "dtype" and t.__module__ == "torch":
        text = str(dtype).removeprefix("torch.")
        try:
            return np.dtype(text)
        except TypeError:
            raise TypeError(f"{name}: torch dtype {dtype} has no NumPy equivalent") from None
    try:
        return np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{name} must be a dtype, got {dtype!r}: {e}") from None


def bias_values(bias, name: str) -> np.ndarray:
    """A bias given as configuration (array, torch tensor or nn.Parameter) as float64 values."""
    if is_torch(bias):
        bias = bias.detach()
        if bias.device.type != "cpu":
            bias = bias.cpu()  # configuration, read once: no per-call transfer
        if bias.dtype.is_floating_point and bias.dtype.itemsize < 4:
            bias = bias.float()  # bfloat16 / float16 (exact in float32)
        arr, _, _ = asarray(bias.contiguous(), name)
        return arr
    if hasattr(type(bias), "__dlpack__") and type(bias) is not np.ndarray:
        arr, dt_name, _ = _core_baseline.dlpack_view(bias, name, False)
        if dt_name == "bfloat16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr
    return np.asarray(bias)
