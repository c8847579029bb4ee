// AVX-512 build of the elementwise kernels (64-byte vectors).
#define FUSEDRNN_ISA_NS isa_avx512
#define FUSEDRNN_VEC_BYTES 64
#if defined(__x86_64__) || defined(__i386__)
#define FUSEDRNN_ISA_TARGET "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma"
#endif
#define FUSEDRNN_ISA_TABLE isa_kernels_avx512
#define FUSEDRNN_ISA_NAME "avx512"
#include "isa/isa_kernels.inc"
