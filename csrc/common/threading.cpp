#include "common/threading.h"

#include <atomic>
#include <pthread.h>
#include <unistd.h>
#include <sched.h>
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

SpinBarrier*& current_barrier() {
  thread_local SpinBarrier* barrier = nullptr;
  return barrier;
}

namespace {
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
// Rounds of pure spinning before a waiter starts yielding: some microseconds.
constexpr int kSpinRounds = 2000;
}  // namespace

void SpinBarrier::wait() {
  const int generation = generation_.load(std::memory_order_acquire);
  // The last to arrive resets the count and opens the barrier; its release (and the acq_rel
  // chain of the arrivals) publishes every member's writes before the barrier to every member.
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) == members_ - 1) {
    arrived_.store(0, std::memory_order_relaxed);
    generation_.store(generation + 1, std::memory_order_release);
    return;
  }
  for (int round = 0; generation_.load(std::memory_order_acquire) == generation; ++round) {
    if (round < kSpinRounds)
      cpu_relax();
    else
      sched_yield();
  }
}

int current_cpu() {
#ifdef __linux__
  return sched_getcpu();
#else
  return -1;
#endif
}

void leave_cpu(int cpu) {
#ifdef __linux__
  if (cpu < 0 || sched_getcpu() != cpu) return;
  // The CPUs the process may use, as its main thread's mask says (never narrowed here); not this
  // thread's own, which an earlier move narrowed: the caller may since have moved to where this
  // thread was sent.
  cpu_set_t allowed;
  if (sched_getaffinity(getpid(), sizeof(allowed), &allowed) != 0 || !CPU_ISSET(cpu, &allowed))
    return;
  if (CPU_COUNT(&allowed) < 2) return;
  CPU_CLR(cpu, &allowed);
  // This thread only (libgomp's pool thread): the caller's thread is never bound.
  pthread_setaffinity_np(pthread_self(), sizeof(allowed), &allowed);
#else
  (void)cpu;
#endif
}

bool have_openmp() {
#ifdef FUSEDRNN_OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace fusedrnn
