#include "bindings/checks.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <vector>

#include "common/blas.h"

namespace fusedrnn {
namespace {

std::string type_name(py::handle obj) { return py::str(py::type::of(obj).attr("__name__")); }

std::string shape_of(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s << (d ? ", " : "") << a.shape(d);
  if (a.ndim() == 1) s << ",";
  s << ")";
  return s.str();
}

std::string expected_shape(std::initializer_list<Dim> dims) {
  std::ostringstream names, sizes;
  names << "(";
  sizes << "(";
  bool first = true;
  for (const Dim& d : dims) {
    names << (first ? "" : ", ") << d.name;
    sizes << (first ? "" : ", ") << d.size;
    first = false;
  }
  if (dims.size() == 1) sizes << ",";
  names << ")";
  sizes << ")";
  return names.str() + " = " + sizes.str();
}

bool is_dtype(const py::array& a, bool float32) {
  return a.dtype().equal(float32 ? py::dtype::of<float>() : py::dtype::of<double>());
}

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
void release_cached_memory() { BufferPool::instance().clear(); }

ArgChecker::ArgChecker(py::handle first, const char* first_name) : first_name_(first_name) {
  if (!py::isinstance<py::array>(first))
    throw py::type_error(std::string(first_name) + " must be a numpy.ndarray of float32 or float64, got " +
                         type_name(first));
  py::array a = py::reinterpret_borrow<py::array>(first);
  if (is_dtype(a, true))
    is_float32_ = true;
  else if (is_dtype(a, false))
    is_float32_ = false;
  else
    throw py::type_error(std::string(first_name) + " must have dtype float32 or float64, got " +
                         std::string(py::str(a.dtype())));
}

py::array ArgChecker::checked_array(py::handle obj, const char* name,
                                    std::initializer_list<Dim> dims) const {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy.ndarray of " + dtype_name() +
                         ", got " + type_name(obj));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!is_dtype(a, is_float32_))
    throw py::type_error(std::string(name) + " must have dtype " + dtype_name() + " like " +
                         first_name_ + ", got " + std::string(py::str(a.dtype())) +
                         " (all arrays of one call share one dtype; nothing is cast silently)");
  bool ok = a.ndim() == static_cast<py::ssize_t>(dims.size());
  if (ok) {
    py::ssize_t d = 0;
    for (const Dim& dim : dims) ok = ok && a.shape(d++) == dim.size;
  }
  if (!ok)
    throw py::value_error(std::string(name) + " must have shape " + expected_shape(dims) +
                          ", but has shape " + shape_of(a));
  return a;
}

py::array ArgChecker::input(py::handle obj, const char* name,
                            std::initializer_list<Dim> dims) const {
  py::array a = checked_array(obj, name, dims);
  // np.ascontiguousarray would pass a contiguous but misaligned view through unchanged (a view
  // into a byte buffer at an odd offset): the kernels' loads of it would be undefined behaviour.
  if (!(a.flags() & py::array::c_style) || !(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    a = py::module_::import("numpy").attr("require")(a, py::none(), py::make_tuple("C", "A"));
  return a;
}

py::object ArgChecker::optional_input(py::handle obj, const char* name,
                                      std::initializer_list<Dim> dims) const {
  if (obj.is_none()) return py::none();
  return input(obj, name, dims);
}

py::array ArgChecker::accumulator(py::handle obj, const char* name,
                                  std::initializer_list<Dim> dims) const {
  if (obj.is_none()) {
    std::vector<int64_t> shape;
    for (const Dim& d : dims) shape.push_back(d.size);
    py::array zeros = output(shape);
    std::memset(zeros.mutable_data(), 0, static_cast<size_t>(zeros.nbytes()));
    return zeros;
  }
  py::array a = checked_array(obj, name, dims);
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) +
                          " is accumulated into in place, so it must be C-contiguous");
  if (!a.writeable())
    throw py::value_error(std::string(name) +
                          " is accumulated into in place, so it must be writeable");
  // The kernels write it through a T*: a misaligned one (a view at an odd byte offset) is
  // undefined behaviour, and vectorised code may fault on it.
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(std::string(name) +
                          " is accumulated into in place, so it must be aligned to its dtype");
  return a;
}

py::array ArgChecker::output(const std::vector<int64_t>& shape) const {
  std::vector<py::ssize_t> s(shape.begin(), shape.end());
  // 64-byte aligned, unlike numpy's own (16): when a team splits rows between threads, a member's
  // share then starts on a cache line whenever its offset is a multiple of 64 bytes, and the two
  // cores never write the same line (measured: an LSTM's training forward at B=16, H=128 on 2
  // threads took 1.10 ms at numpy's alignment and 0.55 ms aligned). From BufferPool.
  int64_t elements = 1;
  for (int64_t d : shape) elements *= d;  // the shapes were checked: no overflow
  const size_t item = is_float32_ ? sizeof(float) : sizeof(double);
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
                                (is_float32_ ? "float32" : "float64");
    PyErr_SetString(PyExc_MemoryError, message.c_str());
    throw py::error_already_set();
  }
  auto held = std::make_unique<PooledBuffer>(PooledBuffer{data, bytes});
  py::capsule owner(held.get(), [](void* p) {
    const std::unique_ptr<PooledBuffer> buffer(static_cast<PooledBuffer*>(p));
    BufferPool::instance().release(buffer->data, buffer->bytes);
  });
  held.release();  // the capsule owns it now
  if (is_float32_) return py::array_t<float>(s, static_cast<float*>(data), owner);
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

RnnActivation parse_nonlinearity(const std::string& nonlinearity) {
  if (nonlinearity == "tanh") return RnnActivation::tanh;
  if (nonlinearity == "relu") return RnnActivation::relu;
  throw py::value_error("nonlinearity must be 'tanh' or 'relu', got '" + nonlinearity + "'");
}

void check_blas_dim(int64_t value, const char* what) {
  if (value > kMaxBlasDim)
    throw py::value_error(std::string(what) + " is " + std::to_string(value) +
                          ", more than the 2**31 - 1 that one BLAS call takes");
}

}  // namespace fusedrnn
