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

// What every single-layer call shares, checked once: x [T,B,I], h0 [B,H], weight_ih [G*H,I],
// weight_hh [G*H,H], with T, B, I read off x and H off weight_hh; then helpers that check (or
// allocate) the other arrays of the call by their shapes.
struct CellCall {
  ArgChecker c;
  int64_t T, B, I, H, G;
  std::string gate_rows;  // "4*hidden_size", for messages
  py::array x, h0, w_ih, w_hh;

  CellCall(py::handle x_, py::handle h0_, py::handle w_ih_, py::handle w_hh_, int64_t gates)
      : c(x_, "x"), G(gates), gate_rows(std::to_string(gates) + "*hidden_size") {
    py::array xa = py::reinterpret_borrow<py::array>(x_);
    if (xa.ndim() != 3)
      throw py::value_error("x must have 3 dimensions (T, B, input_size), but has " +
                            std::to_string(xa.ndim()));
    if (!py::isinstance<py::array>(w_hh_))
      throw py::type_error("weight_hh must be a numpy.ndarray, got " +
                           std::string(py::str(py::type::of(w_hh_).attr("__name__"))));
    py::array wa = py::reinterpret_borrow<py::array>(w_hh_);
    if (wa.ndim() != 2)
      throw py::value_error("weight_hh must be a 2-D numpy.ndarray of shape (" + gate_rows +
                            ", hidden_size)");
    if (wa.shape(0) != gates * wa.shape(1))
      throw py::value_error("weight_hh must have shape (" + gate_rows +
                            ", hidden_size), but has shape (" + std::to_string(wa.shape(0)) +
                            ", " + std::to_string(wa.shape(1)) + ")");
    T = xa.shape(0);
    B = xa.shape(1);
    I = xa.shape(2);
    H = wa.shape(1);
    if (I == 0) throw py::value_error("x must have input_size >= 1, but has 0");
    if (H == 0) throw py::value_error("weight_hh must have hidden_size >= 1, but has 0");
    check_blas_dim(T * B, "T*B (the rows of x)");
    check_blas_dim(I, "input_size");
    check_blas_dim(G * H, "the gate width");
    x = c.input(x_, "x", {{"T", T}, {"B", B}, {"input_size", I}});
    h0 = state(h0_, "h0");
    w_ih = c.input(w_ih_, "weight_ih", {{gate_rows.c_str(), G * H}, {"input_size", I}});
    w_hh = c.input(w_hh_, "weight_hh", {{gate_rows.c_str(), G * H}, {"hidden_size", H}});
  }

  py::array state(py::handle obj, const char* name) const {
    return c.input(obj, name, {{"B", B}, {"hidden_size", H}});
  }
  py::object optional_state(py::handle obj, const char* name) const {
    return c.optional_input(obj, name, {{"B", B}, {"hidden_size", H}});
  }
  py::array bias(py::handle obj, const char* name) const {
    return c.input(obj, name, {{gate_rows.c_str(), G * H}});
  }
  py::array outputs(py::handle obj, const char* name) const {
    return c.input(obj, name, {{"T", T}, {"B", B}, {"hidden_size", H}});
  }
  py::object optional_outputs(py::handle obj, const char* name) const {
    return c.optional_input(obj, name, {{"T", T}, {"B", B}, {"hidden_size", H}});
  }
  // The workspace a training forward returned; None (what an inference forward returns) is named.
  py::array workspace(py::handle obj, const char* expected, int64_t size) const {
    if (obj.is_none())
      throw py::value_error("workspace is None: backward needs the workspace that a training "
                            "forward (training=True) returns");
    return c.input(obj, "workspace", {{expected, size}});
  }
  // The parameter gradients, accumulated into (fresh zeros for None).
  struct Grads {
    py::array w_ih, w_hh, b_ih, b_hh;
  };
  Grads grads(py::handle dw_ih, py::handle dw_hh, py::handle db_ih, py::handle db_hh) const {
    const char* rows = gate_rows.c_str();
    return {c.accumulator(dw_ih, "grads['weight_ih']", {{rows, G * H}, {"input_size", I}}),
            c.accumulator(dw_hh, "grads['weight_hh']", {{rows, G * H}, {"hidden_size", H}}),
            c.accumulator(db_ih, "grads['bias_ih']", {{rows, G * H}}),
            c.accumulator(db_hh, "grads['bias_hh']", {{rows, G * H}})};
  }
  py::array new_outputs() const { return c.output({T, B, H}); }
  py::array new_state() const { return c.output({B, H}); }
  py::array new_dx() const { return c.output({T, B, I}); }
  py::array new_vector(int64_t n) const { return c.output({n}); }
  ScratchMemory new_scratch(int64_t n) const { return ScratchMemory(n, c.is_float32()); }

  // body(float{}) or body(double{}), by the call's dtype.
  template <typename Body>
  void run(Body&& body) const {
    if (!blas_ready()) throw std::runtime_error("fusedrnn: the BLAS was not handed to the kernels");
    if (c.is_float32())
      body(float{});
    else
      body(double{});
  }
};

// ---------------------------------------------------------------- LSTM
py::tuple lstm_forward_py(py::handle x, py::handle h0, py::handle c0, py::handle w_ih,
                          py::handle w_hh, py::handle b_ih, py::handle b_hh, bool training) {
  const CellCall a(x, h0, w_ih, w_hh, 4);
  py::array c0a = a.state(c0, "c0"), bih = a.bias(b_ih, "bias_ih"), bhh = a.bias(b_hh, "bias_hh");
  py::array y = a.new_outputs(), h_n = a.new_state(), c_n = a.new_state();
  py::object ws = training ? py::object(a.new_vector(lstm_workspace_size(a.T, a.B, a.H, 0)))
                           : py::none();
  const ScratchMemory scratch =
      a.new_scratch(lstm_forward_scratch_size(a.T, a.B, a.I, a.H, 0, training));
  a.run([&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    lstm_forward<F>(data_of<F>(y), data_of<F>(h_n), data_of<F>(c_n),
                    lstm_saved(data_of<F>(ws), a.T, a.B, a.H, 0), scratch.data<F>(),
                    cdata_of<F>(a.x), cdata_of<F>(a.h0), cdata_of<F>(c0a), cdata_of<F>(a.w_ih),
                    cdata_of<F>(a.w_hh), cdata_of<F>(bih), cdata_of<F>(bhh), nullptr, nullptr, a.T,
                    a.B, a.I, a.H, 0);
  });
  return py::make_tuple(y, h_n, c_n, ws);
}

py::tuple lstm_backward_py(py::handle x, py::handle h0, py::handle c0, py::handle w_ih,
                           py::handle w_hh, py::handle y, py::handle workspace, py::handle dy,
                           py::handle dh_n, py::handle dc_n, py::handle dw_ih, py::handle dw_hh,
                           py::handle db_ih, py::handle db_hh) {
  const CellCall a(x, h0, w_ih, w_hh, 4);
  py::array c0a = a.state(c0, "c0"), ya = a.outputs(y, "y");
  py::array wsa = a.workspace(workspace, "T*B*5*hidden_size", lstm_workspace_size(a.T, a.B, a.H, 0));
  py::object dya = a.optional_outputs(dy, "dy");
  py::object dhn = a.optional_state(dh_n, "dh_n"), dcn = a.optional_state(dc_n, "dc_n");
  const CellCall::Grads g = a.grads(dw_ih, dw_hh, db_ih, db_hh);
  py::array dx = a.new_dx(), dh0 = a.new_state(), dc0 = a.new_state();
  const ScratchMemory scratch = a.new_scratch(lstm_backward_scratch_size(a.T, a.B, a.H, 0));
  a.run([&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    lstm_backward<F>(data_of<F>(dx), data_of<F>(dh0), data_of<F>(dc0), data_of<F>(g.w_ih),
                     data_of<F>(g.w_hh), data_of<F>(g.b_ih), data_of<F>(g.b_hh), nullptr,
                     scratch.data<F>(), cdata_of<F>(dya), cdata_of<F>(dhn), cdata_of<F>(dcn),
                     cdata_of<F>(a.x), cdata_of<F>(a.h0), cdata_of<F>(c0a), cdata_of<F>(a.w_ih),
                     cdata_of<F>(a.w_hh), nullptr, cdata_of<F>(ya),
                     lstm_saved(cdata_of<F>(wsa), a.T, a.B, a.H, 0), nullptr, a.T, a.B, a.I, a.H, 0);
  });
  return py::make_tuple(dx, dh0, dc0, g.w_ih, g.w_hh, g.b_ih, g.b_hh);
}

// ---------------------------------------------------------------- GRU
py::tuple gru_forward_py(py::handle x, py::handle h0, py::handle w_ih, py::handle w_hh,
                         py::handle b_ih, py::handle b_hh, bool reset_after, bool training) {
  const CellCall a(x, h0, w_ih, w_hh, 3);
  py::array bih = a.bias(b_ih, "bias_ih"), bhh = a.bias(b_hh, "bias_hh");
  py::array y = a.new_outputs(), h_n = a.new_state();
  py::object ws = training ? py::object(a.new_vector(gru_workspace_size(a.T, a.B, a.H)))
                           : py::none();
  const ScratchMemory scratch =
      a.new_scratch(gru_forward_scratch_size(a.T, a.B, a.I, a.H, training));
  a.run([&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    gru_forward<F>(data_of<F>(y), data_of<F>(h_n), gru_saved(data_of<F>(ws), a.T, a.B, a.H),
                   scratch.data<F>(), cdata_of<F>(a.x), cdata_of<F>(a.h0), cdata_of<F>(a.w_ih),
                   cdata_of<F>(a.w_hh), cdata_of<F>(bih), cdata_of<F>(bhh), nullptr, a.T, a.B,
                   a.I, a.H, reset_after);
  });
  return py::make_tuple(y, h_n, ws);
}

py::tuple gru_backward_py(py::handle x, py::handle h0, py::handle w_ih, py::handle w_hh,
                          py::handle y, py::handle workspace, py::handle dy, py::handle dh_n,
                          bool reset_after, py::handle dw_ih, py::handle dw_hh, py::handle db_ih,
                          py::handle db_hh) {
  const CellCall a(x, h0, w_ih, w_hh, 3);
  py::array ya = a.outputs(y, "y");
  py::array wsa = a.workspace(workspace, "T*B*4*hidden_size", gru_workspace_size(a.T, a.B, a.H));
  py::object dya = a.optional_outputs(dy, "dy"), dhn = a.optional_state(dh_n, "dh_n");
  const CellCall::Grads g = a.grads(dw_ih, dw_hh, db_ih, db_hh);
  py::array dx = a.new_dx(), dh0 = a.new_state();
  const ScratchMemory scratch =
      a.new_scratch(gru_backward_scratch_size(a.T, a.B, a.H, reset_after));
  a.run([&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    gru_backward<F>(data_of<F>(dx), data_of<F>(dh0), data_of<F>(g.w_ih), data_of<F>(g.w_hh),
                    data_of<F>(g.b_ih), data_of<F>(g.b_hh), scratch.data<F>(), cdata_of<F>(dya),
                    cdata_of<F>(dhn), cdata_of<F>(a.x), cdata_of<F>(a.h0), cdata_of<F>(a.w_ih),
                    cdata_of<F>(a.w_hh), cdata_of<F>(ya), gru_saved(cdata_of<F>(wsa), a.T, a.B, a.H),
                    nullptr, a.T, a.B, a.I, a.H, reset_after);
  });
  return py::make_tuple(dx, dh0, g.w_ih, g.w_hh, g.b_ih, g.b_hh);
}

// ---------------------------------------------------------------- RNN
py::tuple rnn_forward_py(py::handle x, py::handle h0, py::handle w_ih, py::handle w_hh,
                         py::handle b_ih, py::handle b_hh, const std::string& nonlinearity,
                         bool training) {
  const RnnActivation act = parse_nonlinearity(nonlinearity);
  const CellCall a(x, h0, w_ih, w_hh, 1);
  py::array bih = a.bias(b_ih, "bias_ih"), bhh = a.bias(b_hh, "bias_hh");
  py::array y = a.new_outputs(), h_n = a.new_state();
  const ScratchMemory scratch = a.new_scratch(rnn_forward_scratch_size(a.I, a.H));
  a.run([&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    rnn_forward<F>(data_of<F>(y), data_of<F>(h_n), scratch.data<F>(), cdata_of<F>(a.x),
                   cdata_of<F>(a.h0), cdata_of<F>(a.w_ih), cdata_of<F>(a.w_hh), cdata_of<F>(bih),
                   cdata_of<F>(bhh), nullptr, a.T, a.B, a.I, a.H, act);
  });
  // The RNN saves nothing beyond y: its workspace is empty.
  return py::make_tuple(y, h_n, training ? py::object(a.new_vector(0)) : py::none());
}

py::tuple rnn_backward_py(py::handle x, py::handle h0, py::handle w_ih, py::handle w_hh,
                          py::handle y, py::handle workspace, py::handle dy, py::handle dh_n,
                          const std::string& nonlinearity, py::handle dw_ih, py::handle dw_hh,
                          py::handle db_ih, py::handle db_hh) {
  const RnnActivation act = parse_nonlinearity(nonlinearity);
  const CellCall a(x, h0, w_ih, w_hh, 1);
  py::array ya = a.outputs(y, "y");
  if (!workspace.is_none()) a.workspace(workspace, "0", 0);  // the RNN saves nothing
  py::object dya = a.optional_outputs(dy, "dy"), dhn = a.optional_state(dh_n, "dh_n");
  const CellCall::Grads g = a.grads(dw_ih, dw_hh, db_ih, db_hh);
  py::array dx = a.new_dx(), dh0 = a.new_state();
  const ScratchMemory scratch = a.new_scratch(rnn_backward_scratch_size(a.T, a.B, a.H));
  a.run([&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    rnn_backward<F>(data_of<F>(dx), data_of<F>(dh0), data_of<F>(g.w_ih), data_of<F>(g.w_hh),
                    data_of<F>(g.b_ih), data_of<F>(g.b_hh), scratch.data<F>(), cdata_of<F>(dya),
                    cdata_of<F>(dhn), cdata_of<F>(a.x), cdata_of<F>(a.h0), cdata_of<F>(a.w_ih),
                    cdata_of<F>(a.w_hh), cdata_of<F>(ya), nullptr, a.T, a.B, a.I, a.H, act);
  });
  return py::make_tuple(dx, dh0, g.w_ih, g.w_hh, g.b_ih, g.b_hh);
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
