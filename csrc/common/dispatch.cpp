// Picks the elementwise kernels for the CPU we run on (numpy's runtime-dispatch idea).
#include <atomic>
#include <cstring>

#include "common/isa_table.h"

namespace fusedrnn {
namespace {
bool cpu_has(const char* name) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  if (std::strcmp(name, "avx2") == 0)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (std::strcmp(name, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return std::strcmp(name, "baseline") == 0;
}

const IsaKernels* best_supported() {
  if (cpu_has("avx512")) return &isa_kernels_avx512();
  if (cpu_has("avx2")) return &isa_kernels_avx2();
  return &isa_kernels_baseline();
}

std::atomic<const IsaKernels*> g_active{nullptr};
}  // namespace

bool isa_supported(const char* name) {
  return (std::strcmp(name, "baseline") == 0 || std::strcmp(name, "avx2") == 0 ||
          std::strcmp(name, "avx512") == 0) &&
         cpu_has(name);
}

const IsaKernels& active_isa() {
  const IsaKernels* k = g_active.load(std::memory_order_acquire);
  if (k == nullptr) {
    k = best_supported();
    g_active.store(k, std::memory_order_release);
  }
  return *k;
}

bool select_isa(const char* name) {
  if (!isa_supported(name)) return false;
  const IsaKernels* k = std::strcmp(name, "avx512") == 0 ? &isa_kernels_avx512()
                        : std::strcmp(name, "avx2") == 0 ? &isa_kernels_avx2()
                                                         : &isa_kernels_baseline();
  g_active.store(k, std::memory_order_release);
  return true;
}

}  // namespace fusedrnn
