#include "bindings/checks.h"

#include <pthread.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <limits>
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

}  // namespace

ArgChecker::ArgChecker(py::handle first, const char* first_name) : first_name_(first_name) {
  if (!py::isinstance<py::array>(first))
    throw py::type_error(std::string(first_name) +
                         " must be a numpy.ndarray of float32 or float64, got " + type_name(first));
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

py::array ArgChecker::accumulator(py::handle obj, const char* name, std::initializer_list<Dim> dims,
                                  bool zero_new) const {
  if (obj.is_none()) {
    std::vector<int64_t> shape;
    for (const Dim& d : dims) shape.push_back(d.size);
    py::array fresh = output(shape);
    if (zero_new) std::memset(fresh.mutable_data(), 0, static_cast<size_t>(fresh.nbytes()));
    return fresh;
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
  return pooled_array(shape, is_float32_);
}

RnnActivation parse_nonlinearity(const std::string& nonlinearity) {
  if (nonlinearity == "tanh") return RnnActivation::tanh;
  if (nonlinearity == "relu") return RnnActivation::relu;
  throw py::value_error("nonlinearity must be 'tanh' or 'relu', got '" + nonlinearity + "'");
}

CellOptions parse_cell_options(py::handle options, int64_t direction) {
  CellOptions o;
  if (options.is_none()) return o;
  const py::tuple spec = py::reinterpret_borrow<py::tuple>(options);
  if (spec.size() != 3)
    throw py::value_error("cell options must be (clip, input_forget, activations)");
  o.enabled = true;
  o.clip = spec[0].cast<double>();
  o.input_forget = spec[1].cast<bool>();
  const py::tuple per_direction = spec[2].cast<py::tuple>();
  if (per_direction.size() == 0) return o;
  const py::tuple acts =
      per_direction[std::min<size_t>(direction, per_direction.size() - 1)].cast<py::tuple>();
  if (acts.size() > 3) throw py::value_error("a cell takes at most 3 activation functions");
  for (size_t k = 0; k < acts.size(); ++k) {
    const py::tuple fn = acts[k].cast<py::tuple>();
    const int kind = fn[0].cast<int>();
    if (kind < 0 || kind > static_cast<int>(Activation::softplus))
      throw py::value_error("unknown activation function " + std::to_string(kind));
    o.act[k] = {static_cast<Activation>(kind), fn[1].cast<double>(), fn[2].cast<double>()};
  }
  return o;
}

void check_blas_dim(int64_t value, const char* what) {
  if (value > kMaxBlasDim)
    throw py::value_error(std::string(what) + " is " + std::to_string(value) +
                          ", more than the 2**31 - 1 that one BLAS call takes");
}

namespace {
// Half the time a user waits for Ctrl-C to take (about 0.1 s), and rare enough that taking the
// GIL costs nothing measurable (about a microsecond when no other thread holds it).
constexpr int64_t kSignalPollIntervalNs = 30'000'000;
std::atomic<unsigned long> g_main_thread{0};

// Nanoseconds of a monotonic clock. The kernels ask every step, so this is read often: Linux's
// coarse clock (a few milliseconds' resolution, plenty here) costs 11 ns, steady_clock 32 ns
// (Zen 3), a few percent of the smallest steps.
int64_t monotonic_ns() {
#if defined(CLOCK_MONOTONIC_COARSE)
  timespec now;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
  return int64_t(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
#else
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
#endif
}
}  // namespace

void remember_main_thread() {
  const py::object ident = py::module_::import("threading").attr("main_thread")().attr("ident");
  g_main_thread.store(ident.cast<unsigned long>());
}

bool python_signal_pending() {
  if (static_cast<unsigned long>(pthread_self()) != g_main_thread.load(std::memory_order_relaxed))
    return false;
  thread_local int64_t last_poll = std::numeric_limits<int64_t>::min() / 2;
  const int64_t now = monotonic_ns();
  if (now - last_poll < kSignalPollIntervalNs) return false;
  last_poll = now;
  const PyGILState_STATE gil = PyGILState_Ensure();
  const bool raised = PyErr_CheckSignals() != 0;
  PyGILState_Release(gil);
  return raised;
}

}  // namespace fusedrnn
