// Portable build of the elementwise kernels: 16-byte generic vectors, which the compiler maps to
// SSE2 on x86-64 and to NEON on aarch64.
#define FUSEDRNN_ISA_NS isa_baseline
#define FUSEDRNN_VEC_BYTES 16
#define FUSEDRNN_ISA_TABLE isa_kernels_baseline
#define FUSEDRNN_ISA_NAME "baseline"
#include "isa/isa_kernels.inc"
#define FUSEDRNN_LN_TABLE layer_norm_kernels_baseline
#include "isa/layer_norm_kernels.inc"
