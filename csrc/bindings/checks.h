// Argument checks at the Python boundary: every error names the argument, what was expected and
// what came. Kernels behind this layer assume valid, dense, C-ordered arrays of one dtype.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "bindings/memory_pool.h"
#include "common/blas.h"
#include "common/threading.h"
#include "recurrent_cell.h"

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
  // None allocates a zeroed one (as output()), or with `zero_new` false an uninitialised one,
  // for a kernel that sets every element rather than adding (LayerGrads::fresh).
  py::array accumulator(py::handle obj, const char* name, std::initializer_list<Dim> dims,
                        bool zero_new = true) const;
  // A fresh uninitialised output of the call's dtype, 64-byte aligned (memory_pool.h).
  py::array output(const std::vector<int64_t>& shape) const;
  // The scratch of a kernel call of the call's dtype (memory_pool.h).
  ScratchMemory scratch(int64_t elements) const { return ScratchMemory(elements, is_float32_); }
  // The dtype's name, for messages.
  std::string dtype_name() const { return is_float32_ ? "float32" : "float64"; }

 private:
  py::array checked_array(py::handle obj, const char* name, std::initializer_list<Dim> dims) const;
  bool is_float32_ = true;
  std::string first_name_;
};

// The stop poll of a kernel call (called without the GIL): on Python's main thread, at most every
// kSignalPollIntervalNs (30 ms), takes the GIL and runs the handlers of the signals that came
// (PyErr_CheckSignals); true when one raised, its exception then pending. Other threads never stop:
// Python runs signal handlers on the main thread only.
bool python_signal_pending();
// Which thread is Python's main thread (called once, at import).
void remember_main_thread();

// body(float{}) or body(double{}), by the call's dtype: the one place where a binding turns its
// checked arrays' dtype into the kernel's type. The kernels multiply with the BLAS that fusedrnn
// hands over at import; without it nothing runs (the cross-entropy, which needs none, neither).
//
// The kernel may be stopped by Ctrl-C (or any Python signal handler that raises): while it runs,
// python_signal_pending() is its stop poll (common/threading.h), and once it returns early the
// handler's exception (KeyboardInterrupt) is raised here, after the GIL is back; its outputs are
// then freed with the Python objects that hold them.
template <typename Body>
auto dispatch_dtype(const ArgChecker& checker, Body&& body) {
  if (!blas_ready()) throw std::runtime_error("fusedrnn: the BLAS was not handed to the kernels");
  const StopScope interruptible(python_signal_pending);
  auto run = [&] { return checker.is_float32() ? body(float{}) : body(double{}); };
  if constexpr (std::is_void_v<decltype(run())>) {
    run();
    if (interruptible.stopped()) throw py::error_already_set();
  } else {
    auto result = run();
    if (interruptible.stopped()) throw py::error_already_set();
    return result;
  }
}

// 'tanh' or 'relu', else a ValueError naming the argument.
RnnActivation parse_nonlinearity(const std::string& nonlinearity);

// ONNX's cell options of one direction (recurrent_cell.h, CellOptions) from what
// fusedrnn/_cell_options.py's CellOptions.kernel_args gives: None (not enabled), or
// (clip, input_forget, activations), activations one tuple per direction of (kind, alpha, beta)
// triples. A direction past those given takes the first's.
CellOptions parse_cell_options(py::handle options, int64_t direction);

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
