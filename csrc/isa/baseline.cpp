// Portable build of the elementwise kernels (x86-64 baseline: SSE2, 16-byte vectors).
#define FUSEDRNN_ISA_NS isa_baseline
#define FUSEDRNN_VEC_BYTES 16
#define FUSEDRNN_ISA_TABLE isa_kernels_baseline
#define FUSEDRNN_ISA_NAME "baseline"
#include "isa/isa_kernels.inc"
