// Argument checks at the Python boundary: every error names the argument, what was expected and
// what came. Kernels behind this layer assume valid, dense, C-ordered arrays of one dtype.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "rnn.h"

namespace fusedrnn {
namespace py = pybind11;

// One expected dimension: its symbolic name (for messages) and size.
struct Dim {
  const char* name;
  int64_t size;
};

class ArgChecker {
 public:
  // `function` prefixes no message; it is kept for context in future messages.
  // The dtype of the whole call is taken from `first` (float32 or float64), named `first_name`.
  ArgChecker(py::handle first, const char* first_name);

  bool is_float32() const { return is_float32_; }

  // An input: an ndarray of the call's dtype and of exactly `dims`. A non-contiguous array is
  // copied to a C-contiguous one (documented); the returned array is what the kernel reads.
  py::array input(py::handle obj, const char* name, std::initializer_list<Dim> dims) const;
  // As input(), but None is allowed and stays None (the kernel gets a null pointer: zeros).
  py::object optional_input(py::handle obj, const char* name,
                            std::initializer_list<Dim> dims) const;
  // A gradient buffer accumulated into in place: it must already be writeable, C-contiguous,
  // aligned, of the call's dtype and exact shape, since a copy would hide the result from the
  // caller.
  // None allocates a zeroed one (as output()).
  py::array accumulator(py::handle obj, const char* name, std::initializer_list<Dim> dims) const;
  // A fresh uninitialised output of the call's dtype, 64-byte aligned.
  py::array output(const std::vector<int64_t>& shape) const;
  // The dtype's name, for messages.
  std::string dtype_name() const { return is_float32_ ? "float32" : "float64"; }

 private:
  py::array checked_array(py::handle obj, const char* name, std::initializer_list<Dim> dims) const;
  bool is_float32_ = true;
  std::string first_name_;
};

// Bytes kept for the next calls' outputs and scratch of the same sizes (ArgChecker::output,
// ScratchMemory), and giving them back to the system.
int64_t cached_bytes();
void release_cached_memory();

// The scratch of one kernel call (memory the kernel uses and the caller never sees), 64-byte
// aligned, from the pool that outputs come from and going back to it with this object, so that
// repeated calls do not pay again for the page faults of fresh memory. Impossible sizes raise
// MemoryError.
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

// 'tanh' or 'relu', else a ValueError naming the argument.
RnnActivation parse_nonlinearity(const std::string& nonlinearity);

// A size that must be positive-or-zero and fit one BLAS argument.
void check_blas_dim(int64_t value, const char* what);

// The data of an array, or a null pointer for None. (Not a default-constructed py::array: that
// is a real zero-length array whose pointer is not null.)
// The bindings call these for the kernel's arguments after py::gil_scoped_release, so they touch
// no reference count and call no Python API: a borrowed py::array would Py_INCREF/Py_DECREF
// without the GIL, racing with threads that use the same array (shared weights) and corrupting
// its reference count. `a` must be an ndarray (or None) that the caller keeps alive; writeable
// outputs are the binding's own or checked by ArgChecker::accumulator.
template <typename T>
T* data_of(py::handle a) {
  return a.is_none() ? nullptr : reinterpret_cast<T*>(py::detail::array_proxy(a.ptr())->data);
}
template <typename T>
const T* cdata_of(py::handle a) {
  return a.is_none() ? nullptr : reinterpret_cast<const T*>(py::detail::array_proxy(a.ptr())->data);
}

}  // namespace fusedrnn
