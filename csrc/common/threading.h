// Thread count of the kernels, and the one way they split work across threads.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#ifdef FUSEDRNN_OPENMP
#include <omp.h>
#endif

#include "common/blas.h"

namespace fusedrnn {

int get_num_threads();
void set_num_threads(int n);  // n >= 1
bool have_openmp();

// True on the members of a running team: work they start runs on them alone (no nested teams).
bool& inside_team();

// The barrier of a team's time loop, met every step. A waiter spins briefly (a step's partner is
// microseconds away on a quiet machine), then keeps checking with sched_yield between checks, so
// that on a busy machine it hands its core to whoever needs it (its partner, or another program)
// and never sleeps in the kernel: waking a sleeping thread costs tens to hundreds of microseconds
// on a virtual machine, more than a whole step. libgomp's own barrier either spins for
// milliseconds or sleeps, by GOMP_SPINCOUNT (measured: LSTM B=16 H=128 forward+backward took
// 400 ms instead of 25 ms on a busy machine with libgomp's default spin).
class SpinBarrier {
 public:
  explicit SpinBarrier(int members) : members_(members) {}
  void wait();
  // Before any wait: libgomp may give a team fewer threads than asked.
  void set_members(int members) { members_ = members; }

 private:
  int members_;
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<int> generation_{0};
};

// The barrier of the team the calling thread is a member of (null outside a team).
SpinBarrier*& current_barrier();

// The CPU the calling thread runs on (-1 if unknown).
int current_cpu();
// Called by a team member other than the first, with the CPU the first (the caller of run_team)
// runs on: if this thread woke up on that same CPU, it moves off it. The scheduler tends to wake
// a pool thread on its waker's CPU; two members sharing a core for a call take twice as long,
// and on this machine a third of small calls did.
void leave_cpu(int cpu);

// Runs body(member, members) on a team of up to `threads` threads; each member's BLAS calls run on
// that member alone (restore_blas_threads_after_team), so the team owns the cores. body may call
// team_barrier() (all members must reach it equally often). One thread, or called from a team
// (the two directions of a layer): body(0, 1) on the calling thread alone, whose team_barrier()
// then waits for nobody.
template <typename Body>
void run_team(int threads, Body&& body) {
#ifdef FUSEDRNN_OPENMP
  if (threads > 1 && !inside_team()) {
    SpinBarrier barrier(threads);
    const int caller_cpu = current_cpu();
#pragma omp parallel num_threads(threads)
    {
      if (omp_get_thread_num() != 0) leave_cpu(caller_cpu);
#pragma omp single
      barrier.set_members(omp_get_num_threads());  // (single ends with libgomp's barrier)
      inside_team() = true;
      current_barrier() = &barrier;
      body(omp_get_thread_num(), omp_get_num_threads());
      current_barrier() = nullptr;
      inside_team() = false;
      restore_blas_threads_after_team();
    }
    return;
  }
#endif
  (void)threads;
  SpinBarrier* const enclosing = current_barrier();
  current_barrier() = nullptr;
  body(0, 1);
  current_barrier() = enclosing;
}

// Every member of the running team waits here for the others (alone: returns at once).
inline void team_barrier() {
  if (SpinBarrier* barrier = current_barrier()) barrier->wait();
}

// How many blocks of b items hold a items.
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The share [begin, end) of n items that member m of a team of `members` takes.
inline int64_t share_begin(int64_t n, int m, int members) { return n * m / members; }

// Below this many multiply-adds per step, a barrier per step costs more than a second thread
// saves, and risks far more on a busy machine (a descheduled partner stalls the step); such
// recurrences run on one thread. Every member gets at least 16 hidden units. Tests lower both to
// run the team on tiny sizes.
struct TeamThresholds {
  int64_t min_step_work = 1 << 17;
  int64_t min_units_per_member = 16;
};
TeamThresholds& team_thresholds();

// Threads for a time loop over `hidden` units, held in `panels` panels of the step GEMM (a member
// owns whole panels, common/step_gemm.h), whose recurrent GEMM does `step_work` multiply-adds per
// step.
inline int recurrent_team_size(int64_t hidden, int64_t step_work, int64_t panels) {
  if (inside_team()) return 1;
  const TeamThresholds& limits = team_thresholds();
  const int64_t threads =
      std::min<int64_t>({get_num_threads(), hidden / limits.min_units_per_member, panels});
  return step_work >= limits.min_step_work && threads > 1 ? static_cast<int>(threads) : 1;
}

// Threads for GEMMs over all steps (`work` multiply-adds, no barrier per step): every thread once
// the work reaches the same threshold as a time loop's step.
inline int gemm_team_size(int64_t work) {
  if (inside_team()) return 1;
  return work >= team_thresholds().min_step_work ? get_num_threads() : 1;
}

}  // namespace fusedrnn
