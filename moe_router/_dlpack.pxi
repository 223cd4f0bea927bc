# The DLPack consumer of the compiled core (included by _router_kernels.pxi).
#
# Two ways in, neither importing the producer's library:
#   - the C exchange table a producer's type publishes as
#     `__dlpack_c_exchange_api__` (torch does): a non-owning descriptor
#     filled in a few nanoseconds, valid while the call holds the object;
#     the hot path of route_rows and the views of dlpack_view take it;
#   - the Python protocol, `__dlpack__(max_version=...)`, returning a
#     versioned ("dltensor_versioned") or a legacy ("dltensor") capsule; the
#     view then owns the managed tensor and calls its deleter when freed.
# A descriptor becomes a NumPy view (`dlpack_view`) or, on the hot path, a
# LogitsRef: the pointer, the element kind and the row shape.

from cpython.pycapsule cimport (PyCapsule_GetPointer, PyCapsule_IsValid,
                                PyCapsule_SetName)
cimport cython
from cpython.object cimport PyObject, PyTypeObject
from libc.stdint cimport uint16_t, uint64_t

cdef extern from "csrc/dlpack_abi.h" nogil:
    enum:
        MR_DL_CPU
        MR_DL_CUDA_HOST
        MR_DL_ROCM_HOST
        MR_DL_INT
        MR_DL_UINT
        MR_DL_FLOAT
        MR_DL_BFLOAT
    unsigned long long MR_DL_FLAG_READ_ONLY
    ctypedef struct MrDLDevice:
        int32_t device_type
        int32_t device_id
    ctypedef struct MrDLDataType:
        unsigned char code
        unsigned char bits
        unsigned short lanes
    ctypedef struct MrDLTensor:
        void* data
        MrDLDevice device
        int32_t ndim
        MrDLDataType dtype
        int64_t* shape
        int64_t* strides
        uint64_t byte_offset
    ctypedef struct MrDLManagedTensor:
        MrDLTensor dl_tensor
    ctypedef struct MrDLPackVersion:
        unsigned int major
        unsigned int minor
    ctypedef struct MrDLManagedTensorVersioned:
        MrDLPackVersion version
        uint64_t flags
        MrDLTensor dl_tensor
    ctypedef struct MrDLPackExchangeAPIHeader:
        MrDLPackVersion version
    ctypedef struct MrDLPackExchangeAPI:
        MrDLPackExchangeAPIHeader header
        int (*dltensor_from_py_object_no_sync)(void* py_object, MrDLTensor* out)
    void mr_dl_delete_legacy(MrDLManagedTensor* t)
    void mr_dl_delete_versioned(MrDLManagedTensorVersioned* t)

# Element kinds of logits the kernels read.
cdef enum:
    LK_F32 = 0
    LK_F64 = 1
    LK_F16 = 2
    LK_BF16 = 3


cdef struct LogitsRef:
    const void* data
    int kind
    Py_ssize_t n        # experts per row (the last dimension)
    Py_ssize_t n_rows   # the product of the other dimensions
    Py_ssize_t nbytes
    bint from_dl        # read through a DLPack descriptor
    bint same_shape     # (from_dl) its shape is the views_shape asked about


# The exchange table of the last type seen (and of the others, by type),
# with the data descriptor by which that type's objects say if they require
# grad (torch's do, a DLPack descriptor does not: routing here is for
# inference, and the Python layer explains).  The descriptor is called
# directly: a generic attribute read on a torch tensor walks dicts and cost
# about 450 instructions, as much as the exchange itself.
cdef object _xapi_type = None
cdef const MrDLPackExchangeAPI* _xapi = NULL
cdef bint _xapi_grad = False
cdef object _xapi_grad_descr = None
cdef dict _xapi_by_type = {}

cdef extern from *:
    """
    /* descr.__get__(obj, type(obj)) as a truth value: 1, 0, or -1 when it
     * raised (the error cleared: the caller takes its slow path). */
    static int mr_descr_truth(PyObject *descr, PyObject *obj)
    {
        PyObject *r;
        int truth;
        if (Py_IS_TYPE(descr, &PyGetSetDescr_Type)) {
            /* A C getter (torch's): called as getset_get would, once obj
             * is known to be an instance of the descriptor's type (the
             * caller found descr on type(obj)'s MRO). */
            PyGetSetDef *gs = ((PyGetSetDescrObject *)descr)->d_getset;
            r = gs->get ? gs->get(obj, gs->closure) : NULL;
        } else {
            descrgetfunc get = Py_TYPE(descr)->tp_descr_get;
            r = get ? get(descr, obj, (PyObject *)Py_TYPE(obj)) : NULL;
        }
        if (r == NULL) {
            PyErr_Clear();
            return -1;
        }
        truth = r == Py_False ? 0 : r == Py_True ? 1 : PyObject_IsTrue(r);
        Py_DECREF(r);
        if (truth < 0) PyErr_Clear();
        return truth;
    }
    """
    int mr_descr_truth(object descr, object obj)


cdef object _grad_descriptor(object t):
    # The data descriptor `requires_grad` of type t (found along its MRO as
    # attribute lookup would), or None: the type has none, or not a data
    # descriptor (then the generic read is used).
    for klass in t.__mro__:
        d = klass.__dict__.get("requires_grad")
        if d is not None:
            kind = type(d)
            if hasattr(kind, "__get__") and hasattr(kind, "__set__"):
                return d
            return None
    return None


cdef const MrDLPackExchangeAPI* _exchange_api(object obj):
    # The type's exchange table, or NULL (none, or a major version this
    # consumer does not read).  Cached per type, as the standard allows.
    global _xapi_type, _xapi, _xapi_grad, _xapi_grad_descr
    cdef const MrDLPackExchangeAPI* api = NULL
    t = type(obj)
    if t is _xapi_type:
        return _xapi
    entry = _xapi_by_type.get(t)
    if entry is None:
        cap = getattr(t, "__dlpack_c_exchange_api__", None)
        addr = 0
        if cap is not None and PyCapsule_IsValid(cap, b"dlpack_exchange_api"):
            api = <const MrDLPackExchangeAPI*>PyCapsule_GetPointer(cap, b"dlpack_exchange_api")
            if (api != NULL and api.header.version.major == 1
                    and api.dltensor_from_py_object_no_sync != NULL):
                addr = <size_t>api
        entry = (addr, hasattr(t, "requires_grad"), _grad_descriptor(t))
        if len(_xapi_by_type) < 64:
            _xapi_by_type[t] = entry
    api = <const MrDLPackExchangeAPI*><size_t>entry[0]
    _xapi_type = t
    _xapi = api
    _xapi_grad = entry[1]
    _xapi_grad_descr = entry[2]
    return api


cdef inline bint _dl_on_cpu(const MrDLTensor* t) noexcept nogil:
    return (t.device.device_type == MR_DL_CPU or t.device.device_type == MR_DL_CUDA_HOST
            or t.device.device_type == MR_DL_ROCM_HOST)


cdef inline int _dl_logits_kind(const MrDLTensor* t) noexcept nogil:
    if t.dtype.lanes != 1:
        return -1
    if t.dtype.code == MR_DL_FLOAT:
        if t.dtype.bits == 32:
            return LK_F32
        if t.dtype.bits == 64:
            return LK_F64
        if t.dtype.bits == 16:
            return LK_F16
    elif t.dtype.code == MR_DL_BFLOAT and t.dtype.bits == 16:
        return LK_BF16
    return -1


cdef inline bint _dl_c_contiguous(const MrDLTensor* t) noexcept nogil:
    cdef int64_t expect = 1
    cdef int d
    if t.strides == NULL:
        return True
    for d in range(t.ndim - 1, -1, -1):
        if t.shape[d] != 1 and t.strides[d] != expect:  # (size-1 dims: any stride)
            return False
        expect *= t.shape[d]
    return True


cdef int _logits_ref_dl(object obj, LogitsRef* ref, object views_shape):
    # The hot path for an object whose type has an exchange table: 0 with
    # ref filled (a C-contiguous CPU tensor of a logits kind), -1 for
    # anything else (the Python layer then explains or converts).
    # ref.same_shape: whether the shape is the tuple views_shape (reading a
    # torch tensor's shape from Python costs more than routing a row).
    cdef const MrDLPackExchangeAPI* api = _exchange_api(obj)
    cdef MrDLTensor t
    cdef Py_ssize_t d, rows = 1
    if api == NULL:
        return -1
    if _xapi_grad:
        if _xapi_grad_descr is not None:
            if mr_descr_truth(_xapi_grad_descr, obj) != 0:  # requires grad, or raised
                return -1
        elif obj.requires_grad:
            return -1
    if api.dltensor_from_py_object_no_sync(<void*>obj, &t) != 0:
        PyErr_Clear()
        return -1
    ref.kind = _dl_logits_kind(&t)
    if not _dl_on_cpu(&t) or ref.kind < 0 or t.ndim < 1 or not _dl_c_contiguous(&t):
        return -1
    for d in range(t.ndim - 1):
        rows *= <Py_ssize_t>t.shape[d]
    ref.n = <Py_ssize_t>t.shape[t.ndim - 1]
    ref.n_rows = rows
    ref.from_dl = True
    ref.same_shape = False
    if type(views_shape) is tuple and len(<tuple>views_shape) == t.ndim:
        ref.same_shape = True
        for d in range(t.ndim):
            if <int64_t>(<tuple>views_shape)[d] != t.shape[d]:
                ref.same_shape = False
                break
    ref.data = <const char*>t.data + t.byte_offset
    ref.nbytes = rows * ref.n * (4 if ref.kind == LK_F32 else 8 if ref.kind == LK_F64 else 2)
    return 0


cdef extern from "Python.h":
    void PyErr_Clear()

cdef extern from "numpy/arrayobject.h":
    ctypedef struct _ArrayDescr "PyArray_Descr":
        pass
    # Steals a reference to descr.
    object _PyArray_NewFromDescr "PyArray_NewFromDescr" (
        PyTypeObject* subtype, _ArrayDescr* descr, int nd, cnp.npy_intp* dims,
        cnp.npy_intp* strides, void* data, int flags, PyObject* obj)


# --- Views: any DLPack producer's CPU memory as a NumPy array --------------

@cython.auto_pickle(False)  # owns a pointer: never pickled
cdef class _DLPackOwner:
    """Keeps a consumed managed tensor alive; calls its deleter when freed."""
    cdef MrDLManagedTensor* legacy
    cdef MrDLManagedTensorVersioned* versioned

    def __dealloc__(self):
        if self.versioned != NULL:
            mr_dl_delete_versioned(self.versioned)
        if self.legacy != NULL:
            mr_dl_delete_legacy(self.legacy)


# DLPack device types by name, for messages.
_DL_DEVICE_NAMES = {1: "cpu", 2: "cuda", 3: "cuda_host", 4: "opencl", 7: "vulkan",
                    8: "metal", 9: "vpi", 10: "rocm", 11: "rocm_host", 12: "ext_dev",
                    13: "cuda_managed", 14: "oneapi", 15: "webgpu", 16: "hexagon",
                    17: "maia", 18: "trn"}
_DL_CODE_NAMES = {0: "int", 1: "uint", 2: "float", 3: "opaque", 4: "bfloat", 5: "complex",
                  6: "bool"}


# (code, bits) -> (NumPy dtype, name), filled on first sight of each.
cdef dict _dl_dtypes = {}


cdef object _dl_numpy_dtype(const MrDLTensor* t):
    # (NumPy dtype of the view, dtype name); bfloat16 is viewed as its uint16
    # bits (NumPy has no bfloat16 without ml_dtypes).  None if unsupported.
    cdef int code = t.dtype.code, bits = t.dtype.bits
    if t.dtype.lanes != 1:
        return None
    key = code * 256 + bits
    found = _dl_dtypes.get(key)
    if found is None:
        found = _dl_dtypes[key] = _dl_numpy_dtype_uncached(code, bits)
    return found


# The NumPy name of each (DLPack code, bits) moe_router reads as itself (a
# table, not f-strings of the bits: gcc 12 sees a false maybe-uninitialized
# in Cython's int formatting when it inlines that into this function).
_DL_NUMPY_NAMES = {(MR_DL_FLOAT, b): f"float{b}" for b in (16, 32, 64)}
_DL_NUMPY_NAMES.update({(MR_DL_INT, b): f"int{b}" for b in (8, 16, 32, 64)})
_DL_NUMPY_NAMES.update({(MR_DL_UINT, b): f"uint{b}" for b in (8, 16, 32, 64)})


cdef object _dl_numpy_dtype_uncached(int code, int bits):
    name = _DL_NUMPY_NAMES.get((code, bits))
    if name is not None:
        return np.dtype(name), name
    if code == MR_DL_BFLOAT and bits == 16:
        return np.dtype(np.uint16), "bfloat16"
    if code == 6 and bits == 8:
        return np.dtype(np.bool_), "bool"
    return None


def _dl_type_name(int code, int bits, int lanes):
    base = _DL_CODE_NAMES.get(code)
    if base is None:
        base = {7: "float8_e3m4", 8: "float8_e4m3", 9: "float8_e4m3b11fnuz",
                10: "float8_e4m3fn", 11: "float8_e4m3fnuz", 12: "float8_e5m2",
                13: "float8_e5m2fnuz", 14: "float8_e8m0fnu", 15: "float6_e2m3fn",
                16: "float6_e3m2fn", 17: "float4_e2m1fn"}.get(code, f"code {code}")
        bits = 0
    name = base + (str(bits) if bits else "")
    return name if lanes == 1 else f"{name}x{lanes}"


cdef object _dl_to_numpy(const MrDLTensor* t, object base, bint read_only, str name):
    # A NumPy view of t's memory whose base keeps it alive.
    cdef cnp.npy_intp shape[64]
    cdef cnp.npy_intp strides[64]
    cdef int d
    cdef int flags
    if not _dl_on_cpu(t):
        dev = _DL_DEVICE_NAMES.get(t.device.device_type, f"type {t.device.device_type}")
        raise ValueError(
            f"{name} is on device {dev}:{t.device.device_id}; moe_router routes on the CPU "
            f"(move it there first, e.g. {name}.cpu())")
    dt = _dl_numpy_dtype(t)
    if dt is None:
        raise TypeError(
            f"{name} has DLPack dtype "
            f"{_dl_type_name(t.dtype.code, t.dtype.bits, t.dtype.lanes)}, which moe_router "
            f"does not read (floating point: float16, bfloat16, float32, float64)")
    np_dtype, dtype_name = dt
    if t.ndim < 0 or t.ndim > 64:
        raise ValueError(f"{name} has {t.ndim} dimensions; at most 64 are supported")
    for d in range(t.ndim):
        shape[d] = <cnp.npy_intp>t.shape[d]
        if t.strides != NULL:
            strides[d] = <cnp.npy_intp>(t.strides[d] * np_dtype.itemsize)
    if t.strides == NULL and t.ndim > 0:
        strides[t.ndim - 1] = np_dtype.itemsize
        for d in range(t.ndim - 2, -1, -1):
            strides[d] = strides[d + 1] * max(shape[d + 1], 1)
    flags = 0 if read_only else cnp.NPY_ARRAY_WRITEABLE
    Py_INCREF(np_dtype)  # PyArray_NewFromDescr steals it
    arr = _PyArray_NewFromDescr(
        <PyTypeObject*>np.ndarray, <_ArrayDescr*><void*>np_dtype, t.ndim, shape, strides,
        <void*>(<char*>t.data + t.byte_offset), flags, <PyObject*>NULL)
    cnp.set_array_base(arr, base)
    return arr, dtype_name


def dlpack_view(object obj, str name="array", bint writeable=False):
    """(NumPy view of obj's memory, dtype name, read_only) for a DLPack producer.

    No copy.  The type's exchange table is used when it has one (the view's
    base is obj, which owns the memory), else `obj.__dlpack__()` (a
    versioned capsule when the producer gives one, else a legacy one; the
    view's base owns the consumed tensor).  bfloat16 comes back as uint16
    bits with the name "bfloat16".  Raises ValueError for memory not on the
    CPU or, with `writeable`, read-only memory, and TypeError for dtypes
    other than bool, (u)int8-64, float16/32/64 and bfloat16.
    """
    cdef const MrDLPackExchangeAPI* api = _exchange_api(obj)
    cdef MrDLTensor t
    cdef MrDLManagedTensor* legacy
    cdef MrDLManagedTensorVersioned* versioned
    cdef _DLPackOwner owner
    cdef bint read_only = False
    # A descriptor has no read-only flag: the exchange table serves reads
    # (the view is then read-only), and writes only for types whose memory
    # is always writeable (torch's: the types that say requires_grad).
    if api != NULL and (not writeable or _xapi_grad):
        if api.dltensor_from_py_object_no_sync(<void*>obj, &t) == 0:
            arr, dtype_name = _dl_to_numpy(&t, obj, not writeable, name)
            return arr, dtype_name, False
        PyErr_Clear()  # the protocol below gives the producer's own message
    try:
        device = obj.__dlpack_device__()
    except AttributeError:
        raise TypeError(f"{name} must be an array (NumPy or with __dlpack__), "
                        f"got {type(obj).__name__}") from None
    if int(device[0]) not in (MR_DL_CPU, MR_DL_CUDA_HOST, MR_DL_ROCM_HOST):
        dev = _DL_DEVICE_NAMES.get(int(device[0]), f"type {device[0]}")
        raise ValueError(
            f"{name} is on device {dev}:{device[1]}; moe_router routes on the CPU "
            f"(move it there first, e.g. {name}.cpu())")
    try:
        try:
            cap = obj.__dlpack__(max_version=(1, 0))
        except TypeError:  # a producer older than DLPack 1.0 takes no max_version
            cap = obj.__dlpack__()
    except BufferError as e:  # the producer cannot export it (dtype, byte order, ...)
        raise TypeError(f"{name} cannot be read through DLPack: {e}") from None
    owner = _DLPackOwner.__new__(_DLPackOwner)
    if PyCapsule_IsValid(cap, b"dltensor_versioned"):
        versioned = <MrDLManagedTensorVersioned*>PyCapsule_GetPointer(cap, b"dltensor_versioned")
        PyCapsule_SetName(cap, b"used_dltensor_versioned")  # ours now: its deleter is called once
        owner.versioned = versioned
        if versioned.version.major != 1:
            raise TypeError(f"{name}: DLPack version {versioned.version.major}."
                            f"{versioned.version.minor} is not supported (1.x is)")
        read_only = (versioned.flags & MR_DL_FLAG_READ_ONLY) != 0
        t = versioned.dl_tensor
    elif PyCapsule_IsValid(cap, b"dltensor"):
        legacy = <MrDLManagedTensor*>PyCapsule_GetPointer(cap, b"dltensor")
        PyCapsule_SetName(cap, b"used_dltensor")
        owner.legacy = legacy
        t = legacy.dl_tensor
    else:
        raise TypeError(f"{name}.__dlpack__() did not return a DLPack capsule")
    if writeable and read_only:
        raise ValueError(f"{name} must be writeable, got a read-only DLPack tensor")
    arr, dtype_name = _dl_to_numpy(&t, owner, read_only, name)
    return arr, dtype_name, read_only
