// pybind11 bindings of the training kernels (softmax cross-entropy, the dense layer): checks and
// allocation, then one call into C++ with the GIL released. The Python wrappers are
// fusedrnn.functional.cross_entropy / linear_forward / linear_backward.
#include <string>

#include "bindings/checks.h"
#include "cross_entropy.h"
#include "linear.h"
#include "optim.h"

namespace fusedrnn {
namespace {

std::string type_name(py::handle obj) { return py::str(py::type::of(obj).attr("__name__")); }

// targets as a dense int64 array of shape (N,): any integer dtype is taken (widening integers
// loses nothing); floats, bools and anything else are a TypeError naming the argument.
py::array int64_targets(py::handle targets, int64_t N) {
  if (!py::isinstance<py::array>(targets))
    throw py::type_error("targets must be a numpy.ndarray of integer class indices, got " +
                         type_name(targets));
  py::array t = py::reinterpret_borrow<py::array>(targets);
  const char kind = t.dtype().kind();
  if (kind != 'i' && kind != 'u')
    throw py::type_error("targets must have an integer dtype (class indices), got " +
                         std::string(py::str(t.dtype())));
  if (t.ndim() != 1 || t.shape(0) != N) {
    std::string shape = "(";
    for (py::ssize_t d = 0; d < t.ndim(); ++d)
      shape += (d ? ", " : "") + std::to_string(t.shape(d));
    shape += t.ndim() == 1 ? ",)" : ")";
    throw py::value_error("targets must have shape (N,) = (" + std::to_string(N) +
                          ",), one class index per row of logits, but has shape " + shape);
  }
  // Aligned too (np.ascontiguousarray keeps an int64 view at an odd byte offset as it is): the
  // range check and the kernel read the targets through an int64_t*.
  return py::module_::import("numpy").attr("require")(t, "int64", py::make_tuple("C", "A"));
}

// Every target is a class in [0, V) or ignore_index; the first that is not is named.
void check_target_range(const py::array& targets, int64_t V, int64_t ignore_index) {
  const int64_t* t = static_cast<const int64_t*>(targets.data());
  for (int64_t n = 0; n < targets.shape(0); ++n) {
    if (t[n] == ignore_index || (t[n] >= 0 && t[n] < V)) continue;
    throw py::value_error("targets[" + std::to_string(n) + "] = " + std::to_string(t[n]) +
                          " is out of range: a target must be a class in [0, num_classes) = [0, " +
                          std::to_string(V) +
                          ") or ignore_index = " + std::to_string(ignore_index));
  }
}

Reduction reduction_of(const std::string& reduction) {
  if (reduction == "mean") return Reduction::mean;
  if (reduction == "sum") return Reduction::sum;
  throw py::value_error("reduction must be 'mean' or 'sum', got '" + reduction + "'");
}

py::tuple cross_entropy_py(py::handle logits, py::handle targets, int64_t ignore_index,
                           const std::string& reduction, bool grad) {
  const Reduction red = reduction_of(reduction);
  ArgChecker c(logits, "logits");
  py::array la = py::reinterpret_borrow<py::array>(logits);
  if (la.ndim() != 2)
    throw py::value_error("logits must have 2 dimensions (N, num_classes), but has " +
                          std::to_string(la.ndim()));
  const int64_t N = la.shape(0), V = la.shape(1);
  if (V == 0) throw py::value_error("logits must have num_classes >= 1, but has 0");
  la = c.input(logits, "logits", {{"N", N}, {"num_classes", V}});
  py::array ta = int64_targets(targets, N);
  check_target_range(ta, V, ignore_index);
  py::object dlogits = grad ? py::object(c.output({N, V})) : py::none();
  py::array row_losses = c.output({N});
  const int64_t* target_data = static_cast<const int64_t*>(ta.data());
  const double loss = dispatch_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    return cross_entropy<F>(data_of<F>(dlogits), data_of<F>(row_losses), cdata_of<F>(la),
                            target_data, N, V, ignore_index, red);
  });
  // the loss as a numpy scalar of the logits' dtype
  py::object scalar = py::module_::import("numpy").attr(c.is_float32() ? "float32" : "float64");
  return py::make_tuple(scalar(loss), dlogits);
}

// Reads M, K off x (2-D) and N off weight (N, K), checking ranks and the BLAS limits.
void linear_sizes(py::handle x, py::handle weight, int64_t& M, int64_t& K, int64_t& N) {
  ArgChecker dtype(x, "x");
  py::array xa = py::reinterpret_borrow<py::array>(x);
  if (xa.ndim() != 2)
    throw py::value_error("x must have 2 dimensions (M, in_features), but has " +
                          std::to_string(xa.ndim()));
  if (!py::isinstance<py::array>(weight) || py::reinterpret_borrow<py::array>(weight).ndim() != 2)
    throw py::value_error("weight must be a 2-D numpy.ndarray (out_features, in_features)");
  M = xa.shape(0);
  K = xa.shape(1);
  N = py::reinterpret_borrow<py::array>(weight).shape(0);
  if (K == 0) throw py::value_error("x must have in_features >= 1, but has 0");
  if (N == 0) throw py::value_error("weight must have out_features >= 1, but has 0");
  check_blas_dim(M, "M (the rows of x)");
  check_blas_dim(K, "in_features");
  check_blas_dim(N, "out_features");
}

py::array linear_forward_py(py::handle x, py::handle weight, py::handle bias) {
  int64_t M, K, N;
  linear_sizes(x, weight, M, K, N);
  ArgChecker c(x, "x");
  py::array xa = c.input(x, "x", {{"M", M}, {"in_features", K}});
  py::array wa = c.input(weight, "weight", {{"out_features", N}, {"in_features", K}});
  py::object ba = c.optional_input(bias, "bias", {{"out_features", N}});
  py::array y = c.output({M, N});
  const ScratchMemory scratch = c.scratch(linear_forward_scratch_size(M, K, N));
  dispatch_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    linear_forward<F>(data_of<F>(y), scratch.data<F>(), cdata_of<F>(xa), cdata_of<F>(wa),
                      cdata_of<F>(ba), M, K, N);
  });
  return y;
}

// weight_grad / bias_grad: whether dW / db are wanted (otherwise not computed, returned as None).
py::tuple linear_backward_py(py::handle x, py::handle weight, py::handle dy, py::handle dweight,
                             py::handle dbias, bool weight_grad, bool bias_grad, bool need_dx) {
  int64_t M, K, N;
  linear_sizes(x, weight, M, K, N);
  ArgChecker c(x, "x");
  py::array xa = c.input(x, "x", {{"M", M}, {"in_features", K}});
  py::array wa = c.input(weight, "weight", {{"out_features", N}, {"in_features", K}});
  py::array dya = c.input(dy, "dy", {{"M", M}, {"out_features", N}});
  py::object dwa = weight_grad
                       ? py::object(c.accumulator(dweight, "grads['weight']",
                                                  {{"out_features", N}, {"in_features", K}}))
                       : py::none();
  py::object dba = bias_grad
                       ? py::object(c.accumulator(dbias, "grads['bias']", {{"out_features", N}}))
                       : py::none();
  py::object dx = need_dx ? py::object(c.output({M, K})) : py::none();
  const ScratchMemory scratch = c.scratch(linear_backward_scratch_size(M, N));
  dispatch_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    linear_backward<F>(data_of<F>(dx), data_of<F>(dwa), data_of<F>(dba), scratch.data<F>(),
                       cdata_of<F>(dya), cdata_of<F>(xa), cdata_of<F>(wa), M, K, N);
  });
  return py::make_tuple(dx, dwa, dba);
}

// Flat (n,) views of a parameter and its optimizer state (the Python side ravels them).
void adam_update_py(py::handle param, py::handle grad, py::handle exp_avg, py::handle exp_avg_sq,
                    py::handle max_exp_avg_sq, double lr, double beta1, double beta2, double eps,
                    double weight_decay, bool decoupled_weight_decay, bool maximize, int64_t step) {
  ArgChecker c(param, "param");
  const int64_t n = py::reinterpret_borrow<py::array>(param).size();
  const std::initializer_list<Dim> flat = {{"n", n}};
  py::array pa = c.accumulator(param, "param", flat);
  py::array ga = c.input(grad, "grad", flat);
  py::array ma = c.accumulator(exp_avg, "exp_avg", flat);
  py::array va = c.accumulator(exp_avg_sq, "exp_avg_sq", flat);
  py::object vmax = max_exp_avg_sq.is_none()
                        ? py::object(py::none())
                        : py::object(c.accumulator(max_exp_avg_sq, "max_exp_avg_sq", flat));
  if (step < 1) throw py::value_error("step must be >= 1, got " + std::to_string(step));
  AdamStep s;
  s.lr = lr;
  s.beta1 = beta1;
  s.beta2 = beta2;
  s.eps = eps;
  s.weight_decay = weight_decay;
  s.decoupled_weight_decay = decoupled_weight_decay;
  s.maximize = maximize;
  s.step = step;
  dispatch_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    adam_update<F>(data_of<F>(pa), data_of<F>(ma), data_of<F>(va), data_of<F>(vmax),
                   cdata_of<F>(ga), n, s);
  });
}

double sum_of_squares_py(py::handle x) {
  ArgChecker c(x, "x");
  const int64_t n = py::reinterpret_borrow<py::array>(x).size();
  py::array xa = c.input(x, "x", {{"n", n}});
  return dispatch_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    return sum_of_squares<F>(cdata_of<F>(xa), n);
  });
}

}  // namespace

void bind_training(py::module_& m) {
  using namespace pybind11::literals;
  m.def("cross_entropy", &cross_entropy_py, "logits"_a, "targets"_a, "ignore_index"_a,
        "reduction"_a, "grad"_a);
  m.def("linear_forward", &linear_forward_py, "x"_a, "weight"_a, "bias"_a);
  m.def("linear_backward", &linear_backward_py, "x"_a, "weight"_a, "dy"_a, "dweight"_a, "dbias"_a,
        "weight_grad"_a, "bias_grad"_a, "need_dx"_a);
  m.def("adam_update", &adam_update_py, "param"_a, "grad"_a, "exp_avg"_a, "exp_avg_sq"_a,
        "max_exp_avg_sq"_a, "lr"_a, "beta1"_a, "beta2"_a, "eps"_a, "weight_decay"_a,
        "decoupled_weight_decay"_a, "maximize"_a, "step"_a,
        "Adam's update of one parameter in place (csrc/optim.h); flat (n,) arrays of one dtype.");
  m.def("sum_of_squares", &sum_of_squares_py, "x"_a,
        "The sum of the squares of a flat (n,) array's elements, in float64 (csrc/optim.h).");
}

}  // namespace fusedrnn
