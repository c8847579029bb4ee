// Thread count of the kernels, and the one way they split work across threads.
#pragma once
#include <algorithm>
#include <cstdint>
#ifdef FUSEDRNN_OPENMP
#include <omp.h>
#endif

#include "common/blas.h"

namespace fusedrnn {

int get_num_threads();
void set_num_threads(int n);  // n >= 1
bool have_openmp();

// Below this many elements per call, a step's elementwise pass is cheaper than waking threads.
constexpr int64_t kParallelMinElements = 1 << 16;

// Calls body(row_begin, row_end) over [0, rows), in parallel when rows * row_elements is large.
template <typename Body>
void parallel_rows(int64_t rows, int64_t row_elements, Body&& body) {
#ifdef FUSEDRNN_OPENMP
  const int64_t threads = std::min<int64_t>(get_num_threads(), rows);
  if (threads > 1 && rows * row_elements >= kParallelMinElements) {
#pragma omp parallel for num_threads(static_cast<int>(threads)) schedule(static)
    for (int64_t part = 0; part < threads; ++part)
      body(rows * part / threads, rows * (part + 1) / threads);
    return;
  }
#endif
  body(int64_t{0}, rows);
}

// Runs body(member, members) on a team of up to `threads` threads; each member's BLAS calls run on
// that member alone (SingleThreadedBlas), so the team owns the cores. body may call team_barrier()
// (all members must reach it equally often). One thread: body(0, 1), BLAS free to use its pool.
template <typename Body>
void run_team(int threads, Body&& body) {
#ifdef FUSEDRNN_OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      SingleThreadedBlas single;
      body(omp_get_thread_num(), omp_get_num_threads());
    }
    return;
  }
#endif
  (void)threads;
  body(0, 1);
}

// Every member of the running team waits here for the others.
inline void team_barrier() {
#ifdef FUSEDRNN_OPENMP
#pragma omp barrier
#endif
}

// The share [begin, end) of n items that member m of a team of `members` takes.
inline int64_t share_begin(int64_t n, int m, int members) { return n * m / members; }

}  // namespace fusedrnn
