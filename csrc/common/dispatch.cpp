// Picks the elementwise kernels for the CPU we run on (numpy's runtime-dispatch idea).
#include <atomic>
#include <cstring>

#include "common/isa_table.h"
#if FUSEDRNN_X86 && defined(__GNUC__)
#include <cpuid.h>
#endif

namespace fusedrnn {
namespace {
// The table of an instruction set this build has, by name; null for any other name.
const IsaKernels* table_named(const char* name) {
  if (std::strcmp(name, "baseline") == 0) return &isa_kernels_baseline();
#if FUSEDRNN_X86
  if (std::strcmp(name, "avx2") == 0) return &isa_kernels_avx2();
  if (std::strcmp(name, "avx512") == 0) return &isa_kernels_avx512();
#endif
  return nullptr;
}

#if FUSEDRNN_X86 && defined(__GNUC__)
// F16C (the 16-bit weights' conversions), from CPUID leaf 1 (ECX bit 29): clang 14's
// __builtin_cpu_supports does not know "f16c".
bool cpu_has_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
}
#endif

bool cpu_has(const char* name) {
#if FUSEDRNN_X86 && defined(__GNUC__)  // (GCC and clang)
  if (std::strcmp(name, "avx2") == 0)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
  if (std::strcmp(name, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
#endif
  return std::strcmp(name, "baseline") == 0;
}

const IsaKernels* best_supported() {
  for (const char* name : {"avx512", "avx2"})
    if (isa_supported(name)) return table_named(name);
  return &isa_kernels_baseline();
}

std::atomic<const IsaKernels*> g_active{nullptr};
}  // namespace

bool isa_supported(const char* name) { return table_named(name) != nullptr && cpu_has(name); }

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
  g_active.store(table_named(name), std::memory_order_release);
  return true;
}

}  // namespace fusedrnn
