#include "common/threading.h"

#include <atomic>
#ifdef FUSEDRNN_OPENMP
#include <omp.h>
#endif

namespace fusedrnn {
namespace {
int default_threads() {
#ifdef FUSEDRNN_OPENMP
  return omp_get_max_threads();  // honours OMP_NUM_THREADS
#else
  return 1;
#endif
}
std::atomic<int> g_threads{0};
}  // namespace

int get_num_threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  if (n <= 0) {
    n = default_threads();
    g_threads.store(n, std::memory_order_relaxed);
  }
  return n;
}

void set_num_threads(int n) { g_threads.store(n < 1 ? 1 : n, std::memory_order_relaxed); }

bool& inside_team() {
  thread_local bool inside = false;
  return inside;
}

TeamThresholds& team_thresholds() {
  static TeamThresholds limits;
  return limits;
}

bool have_openmp() {
#ifdef FUSEDRNN_OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace fusedrnn
