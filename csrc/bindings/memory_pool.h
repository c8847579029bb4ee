// The memory of the kernels' outputs and scratch: one pool of 64-byte aligned buffers that keeps
// freed ones for the next call that asks for the same size (fusedrnn.empty_cache() empties it).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace fusedrnn {
namespace py = pybind11;

// Bytes kept for the next calls' outputs and scratch of the same sizes, and giving them back to
// the system.
int64_t cached_bytes();
void release_cached_memory();

// A fresh uninitialised float32 (or float64) array of `shape`, 64-byte aligned, from the pool; its
// buffer goes back to the pool when Python frees the array. No memory: MemoryError in numpy's
// words. The shape's product must not overflow (the callers checked the shapes).
py::array pooled_array(const std::vector<int64_t>& shape, bool float32);

// The scratch of one kernel call (memory the kernel uses and the caller never sees), 64-byte
// aligned, from the pool and going back to it with this object, so that repeated calls do not pay
// again for the page faults of fresh memory. Impossible sizes raise MemoryError.
class ScratchMemory {
 public:
  ScratchMemory(int64_t elements, bool float32);
  ~ScratchMemory();
  ScratchMemory(const ScratchMemory&) = delete;
  ScratchMemory& operator=(const ScratchMemory&) = delete;
  template <typename T>
  T* data() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace fusedrnn
