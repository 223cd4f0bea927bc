/*
 * The DLPack ABI (https://dmlc.github.io/dlpack/latest/), as much of it as a
 * CPU consumer reads: the tensor descriptor, the legacy and the versioned
 * managed tensors (the capsules "dltensor" and "dltensor_versioned"), and the
 * C exchange table a producer's type may publish as
 * `__dlpack_c_exchange_api__` (capsule "dlpack_exchange_api").  Declared
 * here so that the core needs no producer's headers; the layouts are the
 * standard's and must not change.
 */
#ifndef MOE_ROUTER_DLPACK_ABI_H
#define MOE_ROUTER_DLPACK_ABI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { MR_DL_CPU = 1, MR_DL_CUDA_HOST = 3, MR_DL_ROCM_HOST = 11 };
enum { MR_DL_INT = 0, MR_DL_UINT = 1, MR_DL_FLOAT = 2, MR_DL_BFLOAT = 4 };
#define MR_DL_FLAG_READ_ONLY 1ull

typedef struct {
    int32_t device_type; /* a C enum: int-sized */
    int32_t device_id;
} MrDLDevice;

typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} MrDLDataType;

typedef struct {
    void *data;
    MrDLDevice device;
    int32_t ndim;
    MrDLDataType dtype;
    int64_t *shape;
    int64_t *strides; /* in elements; NULL: C-contiguous */
    uint64_t byte_offset;
} MrDLTensor;

typedef struct MrDLManagedTensor {
    MrDLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct MrDLManagedTensor *self);
} MrDLManagedTensor;

typedef struct {
    uint32_t major;
    uint32_t minor;
} MrDLPackVersion;

typedef struct MrDLManagedTensorVersioned {
    MrDLPackVersion version;
    void *manager_ctx;
    void (*deleter)(struct MrDLManagedTensorVersioned *self);
    uint64_t flags;
    MrDLTensor dl_tensor;
} MrDLManagedTensorVersioned;

/* The exchange table (DLPack 1.2+).  Only the non-owning export is called:
 * it fills a descriptor valid until control returns to the producer, which
 * is all a synchronous call needs. */
typedef struct MrDLPackExchangeAPIHeader {
    MrDLPackVersion version;
    struct MrDLPackExchangeAPIHeader *prev_api;
} MrDLPackExchangeAPIHeader;

typedef struct {
    MrDLPackExchangeAPIHeader header;
    void *managed_tensor_allocator;
    void *managed_tensor_from_py_object_no_sync;
    void *managed_tensor_to_py_object_no_sync;
    int (*dltensor_from_py_object_no_sync)(void *py_object, MrDLTensor *out);
    void *current_work_stream;
} MrDLPackExchangeAPI;

static inline void mr_dl_delete_legacy(MrDLManagedTensor *t)
{
    if (t != NULL && t->deleter != NULL)
        t->deleter(t);
}
static inline void mr_dl_delete_versioned(MrDLManagedTensorVersioned *t)
{
    if (t != NULL && t->deleter != NULL)
        t->deleter(t);
}

#ifdef __cplusplus
}
#endif

#endif /* MOE_ROUTER_DLPACK_ABI_H */
