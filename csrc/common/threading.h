// Thread count of the kernels, and the one way they split work across threads.
#pragma once
#include <algorithm>
#include <cstdint>

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

}  // namespace fusedrnn
