// AVX2 + FMA build of the elementwise kernels (32-byte vectors).
#define FUSEDRNN_ISA_NS isa_avx2
#define FUSEDRNN_VEC_BYTES 32
#if defined(__x86_64__) || defined(__i386__)
#define FUSEDRNN_ISA_TARGET "avx2,fma"
#endif
#define FUSEDRNN_ISA_TABLE isa_kernels_avx2
#define FUSEDRNN_ISA_NAME "avx2"
#include "isa/isa_kernels.inc"
