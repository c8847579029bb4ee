// pybind11 bindings of the recurrent kernels: checks and allocation, then one call into C++
// with the GIL released. The Python-facing wrappers are fusedrnn/functional.py.
#include <string>

#include "bindings/checks.h"
#include "common/blas.h"
#include "gru.h"
#include "lstm.h"
#include "rnn.h"

namespace fusedrnn {
namespace {

struct SequenceSizes {
  int64_t steps, batch, input, hidden;
};

// Reads T, B, I off x and H off w_hh ([gates*H, H]) and checks both arrays' rank first.
SequenceSizes sequence_sizes(py::handle x, py::handle w_hh, int64_t gates) {
  ArgChecker dtype(x, "x");  // type and dtype of x
  py::array xa = py::reinterpret_borrow<py::array>(x);
  if (xa.ndim() != 3)
    throw py::value_error("x must have 3 dimensions (T, B, input_size), but has " +
                          std::to_string(xa.ndim()));
  if (!py::isinstance<py::array>(w_hh))
    throw py::type_error("weight_hh must be a numpy.ndarray, got " +
                         std::string(py::str(py::type::of(w_hh).attr("__name__"))));
  if (py::reinterpret_borrow<py::array>(w_hh).ndim() != 2)
    throw py::value_error("weight_hh must be a 2-D numpy.ndarray of shape (" +
                          std::to_string(gates) + "*hidden_size, hidden_size)");
  py::array wa = py::reinterpret_borrow<py::array>(w_hh);
  if (wa.shape(0) != gates * wa.shape(1))
    throw py::value_error("weight_hh must have shape (" + std::to_string(gates) +
                          "*hidden_size, hidden_size), but has shape (" +
                          std::to_string(wa.shape(0)) + ", " + std::to_string(wa.shape(1)) + ")");
  SequenceSizes s{xa.shape(0), xa.shape(1), xa.shape(2), wa.shape(1)};
  if (s.input == 0) throw py::value_error("x must have input_size >= 1, but has 0");
  if (s.hidden == 0) throw py::value_error("weight_hh must have hidden_size >= 1, but has 0");
  check_blas_dim(s.steps * s.batch, "T*B (the rows of x)");
  check_blas_dim(s.input, "input_size");
  check_blas_dim(gates * s.hidden, "the gate width");
  return s;
}

template <typename Body>
auto with_dtype(const ArgChecker& checker, Body&& body) {
  if (!blas_ready()) throw std::runtime_error("fusedrnn: the BLAS was not handed to the kernels");
  if (checker.is_float32()) return body(float{});
  return body(double{});
}

py::array scratch_of(const ArgChecker& checker, int64_t n) { return checker.output({n}); }

// The workspace a training forward returned; None (what an inference forward returns) is named.
py::array saved_workspace(const ArgChecker& checker, py::handle obj, const char* expected,
                          int64_t size) {
  if (obj.is_none())
    throw py::value_error("workspace is None: backward needs the workspace that a training "
                          "forward (training=True) returns");
  return checker.input(obj, "workspace", {{expected, size}});
}

// ---------------------------------------------------------------- LSTM
py::tuple lstm_forward_py(py::handle x, py::handle h0, py::handle c0, py::handle w_ih,
                          py::handle w_hh, py::handle b_ih, py::handle b_hh, bool training) {
  const auto s = sequence_sizes(x, w_hh, 4);
  const int64_t T = s.steps, B = s.batch, I = s.input, H = s.hidden;
  ArgChecker c(x, "x");
  py::array xa = c.input(x, "x", {{"T", T}, {"B", B}, {"input_size", I}});
  py::array h0a = c.input(h0, "h0", {{"B", B}, {"hidden_size", H}});
  py::array c0a = c.input(c0, "c0", {{"B", B}, {"hidden_size", H}});
  py::array wih = c.input(w_ih, "weight_ih", {{"4*hidden_size", 4 * H}, {"input_size", I}});
  py::array whh = c.input(w_hh, "weight_hh", {{"4*hidden_size", 4 * H}, {"hidden_size", H}});
  py::array bih = c.input(b_ih, "bias_ih", {{"4*hidden_size", 4 * H}});
  py::array bhh = c.input(b_hh, "bias_hh", {{"4*hidden_size", 4 * H}});
  py::array y = c.output({T, B, H}), h_n = c.output({B, H}), c_n = c.output({B, H});
  py::object ws = training ? py::object(c.output({lstm_workspace_size(T, B, H, 0)})) : py::none();
  py::array scratch = scratch_of(c, lstm_forward_scratch_size(T, B, H, 0, training));
  with_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    lstm_forward<F>(data_of<F>(y), data_of<F>(h_n), data_of<F>(c_n),
                    lstm_saved(data_of<F>(ws), T, B, H, 0),
                    data_of<F>(scratch), cdata_of<F>(xa), cdata_of<F>(h0a), cdata_of<F>(c0a),
                    cdata_of<F>(wih), cdata_of<F>(whh), cdata_of<F>(bih), cdata_of<F>(bhh), nullptr,
                    nullptr, T, B, I, H, 0);
    return 0;
  });
  return py::make_tuple(y, h_n, c_n, ws);
}

py::tuple lstm_backward_py(py::handle x, py::handle h0, py::handle c0, py::handle w_ih,
                           py::handle w_hh, py::handle y, py::handle workspace, py::handle dy,
                           py::handle dh_n, py::handle dc_n, py::handle dw_ih, py::handle dw_hh,
                           py::handle db_ih, py::handle db_hh) {
  const auto s = sequence_sizes(x, w_hh, 4);
  const int64_t T = s.steps, B = s.batch, I = s.input, H = s.hidden;
  ArgChecker c(x, "x");
  py::array xa = c.input(x, "x", {{"T", T}, {"B", B}, {"input_size", I}});
  py::array h0a = c.input(h0, "h0", {{"B", B}, {"hidden_size", H}});
  py::array c0a = c.input(c0, "c0", {{"B", B}, {"hidden_size", H}});
  py::array wih = c.input(w_ih, "weight_ih", {{"4*hidden_size", 4 * H}, {"input_size", I}});
  py::array whh = c.input(w_hh, "weight_hh", {{"4*hidden_size", 4 * H}, {"hidden_size", H}});
  py::array ya = c.input(y, "y", {{"T", T}, {"B", B}, {"hidden_size", H}});
  py::array wsa = saved_workspace(c, workspace, "T*B*5*hidden_size", lstm_workspace_size(T, B, H, 0));
  py::object dya = c.optional_input(dy, "dy", {{"T", T}, {"B", B}, {"hidden_size", H}});
  py::object dhn = c.optional_input(dh_n, "dh_n", {{"B", B}, {"hidden_size", H}});
  py::object dcn = c.optional_input(dc_n, "dc_n", {{"B", B}, {"hidden_size", H}});
  py::array dwih = c.accumulator(dw_ih, "grads['weight_ih']", {{"4*hidden_size", 4 * H}, {"input_size", I}});
  py::array dwhh = c.accumulator(dw_hh, "grads['weight_hh']", {{"4*hidden_size", 4 * H}, {"hidden_size", H}});
  py::array dbih = c.accumulator(db_ih, "grads['bias_ih']", {{"4*hidden_size", 4 * H}});
  py::array dbhh = c.accumulator(db_hh, "grads['bias_hh']", {{"4*hidden_size", 4 * H}});
  py::array dx = c.output({T, B, I}), dh0 = c.output({B, H}), dc0 = c.output({B, H});
  py::array scratch = scratch_of(c, lstm_backward_scratch_size(T, B, H, 0));
  with_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    lstm_backward<F>(data_of<F>(dx), data_of<F>(dh0), data_of<F>(dc0), data_of<F>(dwih),
                     data_of<F>(dwhh), data_of<F>(dbih), data_of<F>(dbhh), nullptr,
                     data_of<F>(scratch), cdata_of<F>(dya), cdata_of<F>(dhn), cdata_of<F>(dcn),
                     cdata_of<F>(xa), cdata_of<F>(h0a), cdata_of<F>(c0a), cdata_of<F>(wih),
                     cdata_of<F>(whh), nullptr, cdata_of<F>(ya),
                     lstm_saved(cdata_of<F>(wsa), T, B, H, 0), nullptr, T, B, I, H, 0);
    return 0;
  });
  return py::make_tuple(dx, dh0, dc0, dwih, dwhh, dbih, dbhh);
}

// ---------------------------------------------------------------- GRU
py::tuple gru_forward_py(py::handle x, py::handle h0, py::handle w_ih, py::handle w_hh,
                         py::handle b_ih, py::handle b_hh, bool reset_after, bool training) {
  const auto s = sequence_sizes(x, w_hh, 3);
  const int64_t T = s.steps, B = s.batch, I = s.input, H = s.hidden;
  ArgChecker c(x, "x");
  py::array xa = c.input(x, "x", {{"T", T}, {"B", B}, {"input_size", I}});
  py::array h0a = c.input(h0, "h0", {{"B", B}, {"hidden_size", H}});
  py::array wih = c.input(w_ih, "weight_ih", {{"3*hidden_size", 3 * H}, {"input_size", I}});
  py::array whh = c.input(w_hh, "weight_hh", {{"3*hidden_size", 3 * H}, {"hidden_size", H}});
  py::array bih = c.input(b_ih, "bias_ih", {{"3*hidden_size", 3 * H}});
  py::array bhh = c.input(b_hh, "bias_hh", {{"3*hidden_size", 3 * H}});
  py::array y = c.output({T, B, H}), h_n = c.output({B, H});
  py::object ws = training ? py::object(c.output({gru_workspace_size(T, B, H)})) : py::none();
  py::array scratch = scratch_of(c, gru_forward_scratch_size(T, B, H, training));
  with_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    gru_forward<F>(data_of<F>(y), data_of<F>(h_n), gru_saved(data_of<F>(ws), T, B, H),
                   data_of<F>(scratch),
                   cdata_of<F>(xa), cdata_of<F>(h0a), cdata_of<F>(wih), cdata_of<F>(whh),
                   cdata_of<F>(bih), cdata_of<F>(bhh), nullptr, T, B, I, H, reset_after);
    return 0;
  });
  return py::make_tuple(y, h_n, ws);
}

py::tuple gru_backward_py(py::handle x, py::handle h0, py::handle w_ih, py::handle w_hh,
                          py::handle y, py::handle workspace, py::handle dy, py::handle dh_n,
                          bool reset_after, py::handle dw_ih, py::handle dw_hh, py::handle db_ih,
                          py::handle db_hh) {
  const auto s = sequence_sizes(x, w_hh, 3);
  const int64_t T = s.steps, B = s.batch, I = s.input, H = s.hidden;
  ArgChecker c(x, "x");
  py::array xa = c.input(x, "x", {{"T", T}, {"B", B}, {"input_size", I}});
  py::array h0a = c.input(h0, "h0", {{"B", B}, {"hidden_size", H}});
  py::array wih = c.input(w_ih, "weight_ih", {{"3*hidden_size", 3 * H}, {"input_size", I}});
  py::array whh = c.input(w_hh, "weight_hh", {{"3*hidden_size", 3 * H}, {"hidden_size", H}});
  py::array ya = c.input(y, "y", {{"T", T}, {"B", B}, {"hidden_size", H}});
  py::array wsa = saved_workspace(c, workspace, "T*B*4*hidden_size", gru_workspace_size(T, B, H));
  py::object dya = c.optional_input(dy, "dy", {{"T", T}, {"B", B}, {"hidden_size", H}});
  py::object dhn = c.optional_input(dh_n, "dh_n", {{"B", B}, {"hidden_size", H}});
  py::array dwih = c.accumulator(dw_ih, "grads['weight_ih']", {{"3*hidden_size", 3 * H}, {"input_size", I}});
  py::array dwhh = c.accumulator(dw_hh, "grads['weight_hh']", {{"3*hidden_size", 3 * H}, {"hidden_size", H}});
  py::array dbih = c.accumulator(db_ih, "grads['bias_ih']", {{"3*hidden_size", 3 * H}});
  py::array dbhh = c.accumulator(db_hh, "grads['bias_hh']", {{"3*hidden_size", 3 * H}});
  py::array dx = c.output({T, B, I}), dh0 = c.output({B, H});
  py::array scratch = scratch_of(c, gru_backward_scratch_size(T, B, H, reset_after));
  with_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    gru_backward<F>(data_of<F>(dx), data_of<F>(dh0), data_of<F>(dwih), data_of<F>(dwhh),
                    data_of<F>(dbih), data_of<F>(dbhh), data_of<F>(scratch), cdata_of<F>(dya),
                    cdata_of<F>(dhn), cdata_of<F>(xa), cdata_of<F>(h0a), cdata_of<F>(wih),
                    cdata_of<F>(whh), cdata_of<F>(ya), gru_saved(cdata_of<F>(wsa), T, B, H),
                    nullptr, T, B, I, H, reset_after);
    return 0;
  });
  return py::make_tuple(dx, dh0, dwih, dwhh, dbih, dbhh);
}

// ---------------------------------------------------------------- RNN
RnnActivation activation_of(const std::string& nonlinearity) {
  if (nonlinearity == "tanh") return RnnActivation::tanh;
  if (nonlinearity == "relu") return RnnActivation::relu;
  throw py::value_error("nonlinearity must be 'tanh' or 'relu', got '" + nonlinearity + "'");
}

py::tuple rnn_forward_py(py::handle x, py::handle h0, py::handle w_ih, py::handle w_hh,
                         py::handle b_ih, py::handle b_hh, const std::string& nonlinearity,
                         bool training) {
  const RnnActivation act = activation_of(nonlinearity);
  const auto s = sequence_sizes(x, w_hh, 1);
  const int64_t T = s.steps, B = s.batch, I = s.input, H = s.hidden;
  ArgChecker c(x, "x");
  py::array xa = c.input(x, "x", {{"T", T}, {"B", B}, {"input_size", I}});
  py::array h0a = c.input(h0, "h0", {{"B", B}, {"hidden_size", H}});
  py::array wih = c.input(w_ih, "weight_ih", {{"hidden_size", H}, {"input_size", I}});
  py::array whh = c.input(w_hh, "weight_hh", {{"hidden_size", H}, {"hidden_size", H}});
  py::array bih = c.input(b_ih, "bias_ih", {{"hidden_size", H}});
  py::array bhh = c.input(b_hh, "bias_hh", {{"hidden_size", H}});
  py::array y = c.output({T, B, H}), h_n = c.output({B, H});
  py::array scratch = scratch_of(c, rnn_forward_scratch_size(H));
  with_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    rnn_forward<F>(data_of<F>(y), data_of<F>(h_n), data_of<F>(scratch), cdata_of<F>(xa),
                   cdata_of<F>(h0a), cdata_of<F>(wih), cdata_of<F>(whh), cdata_of<F>(bih),
                   cdata_of<F>(bhh), nullptr, T, B, I, H, act);
    return 0;
  });
  // The RNN saves nothing beyond y: its workspace is empty.
  return py::make_tuple(y, h_n, training ? py::object(c.output({0})) : py::object(py::none()));
}

py::tuple rnn_backward_py(py::handle x, py::handle h0, py::handle w_ih, py::handle w_hh,
                          py::handle y, py::handle workspace, py::handle dy, py::handle dh_n,
                          const std::string& nonlinearity, py::handle dw_ih, py::handle dw_hh,
                          py::handle db_ih, py::handle db_hh) {
  const RnnActivation act = activation_of(nonlinearity);
  const auto s = sequence_sizes(x, w_hh, 1);
  const int64_t T = s.steps, B = s.batch, I = s.input, H = s.hidden;
  ArgChecker c(x, "x");
  py::array xa = c.input(x, "x", {{"T", T}, {"B", B}, {"input_size", I}});
  py::array h0a = c.input(h0, "h0", {{"B", B}, {"hidden_size", H}});
  py::array wih = c.input(w_ih, "weight_ih", {{"hidden_size", H}, {"input_size", I}});
  py::array whh = c.input(w_hh, "weight_hh", {{"hidden_size", H}, {"hidden_size", H}});
  py::array ya = c.input(y, "y", {{"T", T}, {"B", B}, {"hidden_size", H}});
  if (!workspace.is_none()) c.input(workspace, "workspace", {{"0", 0}});  // the RNN saves nothing
  py::object dya = c.optional_input(dy, "dy", {{"T", T}, {"B", B}, {"hidden_size", H}});
  py::object dhn = c.optional_input(dh_n, "dh_n", {{"B", B}, {"hidden_size", H}});
  py::array dwih = c.accumulator(dw_ih, "grads['weight_ih']", {{"hidden_size", H}, {"input_size", I}});
  py::array dwhh = c.accumulator(dw_hh, "grads['weight_hh']", {{"hidden_size", H}, {"hidden_size", H}});
  py::array dbih = c.accumulator(db_ih, "grads['bias_ih']", {{"hidden_size", H}});
  py::array dbhh = c.accumulator(db_hh, "grads['bias_hh']", {{"hidden_size", H}});
  py::array dx = c.output({T, B, I}), dh0 = c.output({B, H});
  py::array scratch = scratch_of(c, rnn_backward_scratch_size(T, B, H));
  with_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    rnn_backward<F>(data_of<F>(dx), data_of<F>(dh0), data_of<F>(dwih), data_of<F>(dwhh),
                    data_of<F>(dbih), data_of<F>(dbhh), data_of<F>(scratch), cdata_of<F>(dya),
                    cdata_of<F>(dhn), cdata_of<F>(xa), cdata_of<F>(h0a), cdata_of<F>(wih),
                    cdata_of<F>(whh), cdata_of<F>(ya), nullptr, T, B, I, H, act);
    return 0;
  });
  return py::make_tuple(dx, dh0, dwih, dwhh, dbih, dbhh);
}

}  // namespace

void bind_recurrent(py::module_& m) {
  using namespace pybind11::literals;
  m.def("lstm_forward", &lstm_forward_py, "x"_a, "h0"_a, "c0"_a, "weight_ih"_a, "weight_hh"_a,
        "bias_ih"_a, "bias_hh"_a, "training"_a = true);
  m.def("lstm_backward", &lstm_backward_py, "x"_a, "h0"_a, "c0"_a, "weight_ih"_a, "weight_hh"_a,
        "y"_a, "workspace"_a, "dy"_a, "dh_n"_a, "dc_n"_a, "dweight_ih"_a, "dweight_hh"_a,
        "dbias_ih"_a, "dbias_hh"_a);
  m.def("gru_forward", &gru_forward_py, "x"_a, "h0"_a, "weight_ih"_a, "weight_hh"_a,
        "bias_ih"_a, "bias_hh"_a, "reset_after"_a = true, "training"_a = true);
  m.def("gru_backward", &gru_backward_py, "x"_a, "h0"_a, "weight_ih"_a, "weight_hh"_a, "y"_a,
        "workspace"_a, "dy"_a, "dh_n"_a, "reset_after"_a, "dweight_ih"_a, "dweight_hh"_a,
        "dbias_ih"_a, "dbias_hh"_a);
  m.def("rnn_forward", &rnn_forward_py, "x"_a, "h0"_a, "weight_ih"_a, "weight_hh"_a,
        "bias_ih"_a, "bias_hh"_a, "nonlinearity"_a = "tanh", "training"_a = true);
  m.def("rnn_backward", &rnn_backward_py, "x"_a, "h0"_a, "weight_ih"_a, "weight_hh"_a, "y"_a,
        "workspace"_a, "dy"_a, "dh_n"_a, "nonlinearity"_a, "dweight_ih"_a, "dweight_hh"_a,
        "dbias_ih"_a, "dbias_hh"_a);
  m.def("lstm_workspace_size", &lstm_workspace_size, "T"_a, "B"_a, "H"_a, "P"_a = 0);
  m.def("gru_workspace_size", &gru_workspace_size, "T"_a, "B"_a, "H"_a);
}

}  // namespace fusedrnn
