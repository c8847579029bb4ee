// AVX-512 build of the elementwise kernels (64-byte vectors); x86 only.
#include "common/isa_table.h"
#if FUSEDRNN_X86
#define FUSEDRNN_ISA_NS isa_avx512
#define FUSEDRNN_VEC_BYTES 64
#define FUSEDRNN_ISA_TARGET "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c"
#define FUSEDRNN_ISA_TABLE isa_kernels_avx512
#define FUSEDRNN_ISA_NAME "avx512"
#include "isa/isa_kernels.inc"
#define FUSEDRNN_LN_TABLE layer_norm_kernels_avx512
#include "isa/layer_norm_kernels.inc"
#endif
