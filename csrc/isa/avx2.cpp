// AVX2 + FMA (+ F16C) build of the elementwise kernels (32-byte vectors); x86 only.
#include "common/isa_table.h"
#if FUSEDRNN_X86
#define FUSEDRNN_ISA_NS isa_avx2
#define FUSEDRNN_VEC_BYTES 32
#define FUSEDRNN_ISA_TARGET "avx2,fma,f16c"
#define FUSEDRNN_ISA_TABLE isa_kernels_avx2
#define FUSEDRNN_ISA_NAME "avx2"
#include "isa/isa_kernels.inc"
#define FUSEDRNN_LN_TABLE layer_norm_kernels_avx2
#include "isa/layer_norm_kernels.inc"
#endif
