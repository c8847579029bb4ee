#include "bindings/memory_pool.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <string>

namespace fusedrnn {
namespace {

// 64-byte aligned (a cache line, an AVX-512 vector); at least one line, so never null for 0
// bytes. Null when the memory is not there.
void* allocate_aligned(size_t bytes) {
  if (bytes > std::numeric_limits<size_t>::max() - 64) return nullptr;
  const size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
  return std::aligned_alloc(64, rounded);
}

// The buffers of the kernels' outputs that Python has freed and of finished calls' scratch, kept
// for the next buffers of the same size: a training loop asks for the same outputs, workspace and
// scratch every step, and fresh memory of that size comes from the kernel page by page, zeroed
// (measured: a 2-layer bidirectional LSTM forward at B=32, T=100, H=256 spent 12% of its time in
// page faults and munmap for its 81 MiB workspace; LSTM forward+backward at B=16, H=128 took
// 4.6 ms with fresh scratch and 2.1 ms with reused). At most kMaxBytes are kept, the most
// recently freed first out. Never destroyed: a capsule may release its buffer while the
// interpreter shuts down, after static destructors.
class BufferPool {
 public:
  static BufferPool& instance() {
    static BufferPool* const pool = new BufferPool();  // intentionally leaked, see above
    return *pool;
  }
  // A 64-byte aligned buffer of `bytes`, or null when the memory is not there.
  void* acquire(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (size_t i = free_.size(); i-- > 0;) {
        if (free_[i].bytes != bytes) continue;
        void* p = free_[i].data;
        cached_bytes_ -= bytes;
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
        return p;
      }
    }
    return allocate_aligned(bytes);
  }
  void release(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    while (!free_.empty() && cached_bytes_ + bytes > kMaxBytes) {  // the oldest go first
      std::free(free_.front().data);
      cached_bytes_ -= free_.front().bytes;
      free_.erase(free_.begin());
    }
    if (bytes > kMaxBytes) {
      std::free(p);
      return;
    }
    free_.push_back({p, bytes});
    cached_bytes_ += bytes;
  }
  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_bytes_;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Buffer& buffer : free_) std::free(buffer.data);
    free_.clear();
    cached_bytes_ = 0;
  }

 private:
  static constexpr size_t kMaxBytes = size_t(256) << 20;
  struct Buffer {
    void* data;
    size_t bytes;
  };
  std::mutex mutex_;
  std::vector<Buffer> free_;
  size_t cached_bytes_ = 0;
};

// What a pooled output's capsule holds: its buffer and size.
struct PooledBuffer {
  void* data;
  size_t bytes;
};
}  // namespace

int64_t cached_bytes() { return static_cast<int64_t>(BufferPool::instance().cached_bytes()); }
void release_cached_memory() {
  BufferPool::instance().clear();
#if defined(__GLIBC__)
  // free() keeps what it gets back for the process's next allocations: glibc raises its mmap
  // threshold after a large buffer is freed (up to 32 MiB), so the next buffers of that size come
  // from its heaps, which it does not shrink. malloc_trim hands the free pages of every heap back
  // (measured: RSS 442 MiB after the pool was emptied, 57 MiB after malloc_trim).
  malloc_trim(0);
#endif
}

py::array pooled_array(const std::vector<int64_t>& shape, bool float32) {
  std::vector<py::ssize_t> s(shape.begin(), shape.end());
  // 64-byte aligned, unlike numpy's own (16): when a team splits rows between threads, a member's
  // share then starts on a cache line whenever its offset is a multiple of 64 bytes, and the two
  // cores never write the same line (measured: an LSTM's training forward at B=16, H=128 on 2
  // threads took 1.10 ms at numpy's alignment and 0.55 ms aligned). From BufferPool.
  int64_t elements = 1;
  for (int64_t d : shape) elements *= d;  // the shapes were checked: no overflow
  const size_t item = float32 ? sizeof(float) : sizeof(double);
  const size_t bytes = static_cast<size_t>(elements) * item;
  void* data = BufferPool::instance().acquire(bytes);
  if (!data) {  // numpy's words for it
    std::string dims;
    for (int64_t d : shape) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
    if (shape.size() == 1) dims += ",";
    char size[32];
    std::snprintf(size, sizeof(size), "%.2f GiB", static_cast<double>(bytes) / (1 << 30));
    const std::string message = std::string("Unable to allocate ") + size +
                                " for an array with shape (" + dims + ") and data type " +
                                (float32 ? "float32" : "float64");
    PyErr_SetString(PyExc_MemoryError, message.c_str());
    throw py::error_already_set();
  }
  auto held = std::make_unique<PooledBuffer>(PooledBuffer{data, bytes});
  py::capsule owner(held.get(), [](void* p) {
    const std::unique_ptr<PooledBuffer> buffer(static_cast<PooledBuffer*>(p));
    BufferPool::instance().release(buffer->data, buffer->bytes);
  });
  held.release();  // the capsule owns it now
  if (float32) return py::array_t<float>(s, static_cast<float*>(data), owner);
  return py::array_t<double>(s, static_cast<double*>(data), owner);
}

ScratchMemory::ScratchMemory(int64_t elements, bool float32) {
  const int64_t item = float32 ? 4 : 8;
  if (elements < 0 || elements > std::numeric_limits<int64_t>::max() / item) throw std::bad_alloc();
  bytes_ = static_cast<size_t>(elements * item);
  data_ = BufferPool::instance().acquire(bytes_);
  if (!data_) throw std::bad_alloc();  // pybind11 raises MemoryError
}

ScratchMemory::~ScratchMemory() { BufferPool::instance().release(data_, bytes_); }

}  // namespace fusedrnn
