// pybind11 bindings of the single-layer recurrent cell kernels (recurrent_cell.h: LSTM, GRU,
// RNN): checks and allocation, then one call into C++ with the GIL released. The Python-facing
// wrappers are fusedrnn/functional.py.
#include <string>

#include "bindings/checks.h"
#include "gru.h"
#include "lstm.h"
#include "recurrent_cell.h"

namespace fusedrnn {
namespace {

// What every single-layer call shares, checked once: x [T,B,I], h0 [B,H], weight_ih [G*H,I],
// weight_hh [G*H,H], with T, B, I read off x and H off weight_hh; then helpers that check (or
// allocate) the other arrays of the call by their shapes, and the kernel calls.
struct CellCall {
  ArgChecker c;
  CellKind cell;
  CellShape shape;
  int64_t T, B, I, H, G;
  std::string gate_rows;  // "4*hidden_size", for messages
  py::array x, h0, w_ih, w_hh;

  CellCall(CellKind kind, py::handle x_, py::handle h0_, py::handle w_ih_, py::handle w_hh_)
      : c(x_, "x"), cell(kind), G(gates_of(kind)), gate_rows(std::to_string(G) + "*hidden_size") {
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
    if (wa.shape(0) != G * wa.shape(1))
      throw py::value_error("weight_hh must have shape (" + gate_rows +
                            ", hidden_size), but has shape (" + std::to_string(wa.shape(0)) + ", " +
                            std::to_string(wa.shape(1)) + ")");
    T = xa.shape(0);
    B = xa.shape(1);
    I = xa.shape(2);
    H = wa.shape(1);
    if (I == 0) throw py::value_error("x must have input_size >= 1, but has 0");
    if (H == 0) throw py::value_error("weight_hh must have hidden_size >= 1, but has 0");
    check_blas_dim(T * B, "T*B (the rows of x)");
    check_blas_dim(I, "input_size");
    check_blas_dim(G * H, "the gate width");
    shape.steps = T;
    shape.batch = B;
    shape.input = I;
    shape.hidden = H;
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
  py::object optional_outputs(py::handle obj, const char* name) const {
    return c.optional_input(obj, name, {{"T", T}, {"B", B}, {"hidden_size", H}});
  }
  int64_t workspace_size() const { return cell_workspace_size(cell, shape); }

  // The kernel arguments both passes fill alike: x, h0, c0 (None but for the LSTM), the weights
  // (the biases null in backward, which does not read them), the scratch and the sizes. Called
  // with the GIL released: no reference counting (see data_of).
  template <typename F, typename Args>
  void set_common(Args& k, py::handle c0, const F* b_ih, const F* b_hh,
                  const ScratchMemory& scratch) const {
    k.x = cdata_of<F>(x);
    k.h0 = cdata_of<F>(h0);
    k.c0 = cdata_of<F>(c0);
    k.w = {cdata_of<F>(w_ih), cdata_of<F>(w_hh), b_ih, b_hh, nullptr};
    k.scratch = scratch.data<F>();
    k.shape = shape;
  }

  // The forward: y, h_n, c_n (LSTM only; c0 is None for the others), and the workspace
  // (training; None in inference).
  py::tuple forward(py::handle c0, py::handle b_ih, py::handle b_hh, bool training) const {
    const bool lstm = cell == CellKind::lstm;
    py::object c0a = lstm ? py::object(state(c0, "c0")) : py::none();
    py::array bih = bias(b_ih, "bias_ih"), bhh = bias(b_hh, "bias_hh");
    py::array y = c.output({T, B, H}), h_n = c.output({B, H});
    py::object c_n = lstm ? py::object(c.output({B, H})) : py::none();
    py::object ws = training ? py::object(c.output({workspace_size()})) : py::none();
    const ScratchMemory scratch = c.scratch(cell_forward_scratch_size(cell, shape, training));
    dispatch_dtype(c, [&](auto tag) {
      using F = decltype(tag);
      py::gil_scoped_release release;
      CellForwardArgs<F> k;
      set_common<F>(k, c0a, cdata_of<F>(bih), cdata_of<F>(bhh), scratch);
      k.y = data_of<F>(y);
      k.h_n = data_of<F>(h_n);
      k.c_n = data_of<F>(c_n);
      k.workspace = data_of<F>(ws);
      cell_forward(cell, k);
    });
    if (lstm) return py::make_tuple(y, h_n, c_n, ws);
    return py::make_tuple(y, h_n, ws);
  }

  // The backward: dx, dh0, dc0 (LSTM only: c0 and dc_n are None for the others), and the
  // parameter gradients, accumulated into (fresh zeros for None). The workspace a training
  // forward returned; None (what an inference forward returns) is named, except for the RNN,
  // which saves nothing.
  // input_grad false: dx is not computed (None), which saves dx = dgates W_ih, a quarter of the
  // GEMM work of a backward whose input_size is hidden_size (an input that is data).
  // frozen: the roles ("weight_ih", ...) whose gradients are not wanted: None, not computed (a
  // frozen weight saves its dW GEMM, a quarter of the backward's work at input_size = H).
  py::tuple backward(py::handle c0, py::handle y, py::handle workspace, const char* ws_size,
                     py::handle dy, py::handle dh_n, py::handle dc_n, py::handle dw_ih,
                     py::handle dw_hh, py::handle db_ih, py::handle db_hh, bool input_grad,
                     py::handle frozen) const {
    const bool lstm = cell == CellKind::lstm;
    py::object c0a = lstm ? py::object(state(c0, "c0")) : py::none();
    py::array ya = c.input(y, "y", {{"T", T}, {"B", B}, {"hidden_size", H}});
    if (workspace.is_none() && cell != CellKind::rnn)
      throw py::value_error(
          "workspace is None: backward needs the workspace that a training "
          "forward (training=True) returns");
    py::object wsa =
        workspace.is_none()
            ? py::none()
            : py::object(c.input(workspace, "workspace", {{ws_size, workspace_size()}}));
    py::object dya = optional_outputs(dy, "dy"), dhn = optional_state(dh_n, "dh_n");
    py::object dcn = lstm ? optional_state(dc_n, "dc_n") : py::none();
    const char* rows = gate_rows.c_str();
    // No grads given: fresh arrays that the kernel sets rather than adds into, so that they need
    // no zero-filling first (LayerGrads::fresh); a call with no rows writes nothing, so there
    // they are zeros.
    const char* roles[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
    const py::handle given[4] = {dw_ih, dw_hh, db_ih, db_hh};
    bool wanted[4];
    bool fresh = T * B > 0;
    for (int i = 0; i < 4; ++i) {
      wanted[i] = !py::cast<bool>(frozen.attr("__contains__")(roles[i]));
      fresh = fresh && (given[i].is_none() || !wanted[i]);
    }
    auto gradient = [&](int i, std::initializer_list<Dim> dims) {
      const std::string name = std::string("grads['") + roles[i] + "']";
      return wanted[i] ? py::object(c.accumulator(given[i], name.c_str(), dims, !fresh))
                       : py::none();
    };
    py::object gw_ih = gradient(0, {{rows, G * H}, {"input_size", I}});
    py::object gw_hh = gradient(1, {{rows, G * H}, {"hidden_size", H}});
    py::object gb_ih = gradient(2, {{rows, G * H}});
    py::object gb_hh = gradient(3, {{rows, G * H}});
    py::object dx = input_grad ? py::object(c.output({T, B, I})) : py::none();
    py::array dh0 = c.output({B, H});
    py::object dc0 = lstm ? py::object(c.output({B, H})) : py::none();
    const ScratchMemory scratch = c.scratch(cell_backward_scratch_size(cell, shape));
    dispatch_dtype(c, [&](auto tag) {
      using F = decltype(tag);
      py::gil_scoped_release release;
      CellBackwardArgs<F> k;
      set_common<F>(k, c0a, nullptr, nullptr, scratch);
      k.dx = data_of<F>(dx);
      k.dh0 = data_of<F>(dh0);
      k.dc0 = data_of<F>(dc0);
      k.g = {data_of<F>(gw_ih), data_of<F>(gw_hh), data_of<F>(gb_ih), data_of<F>(gb_hh), nullptr};
      k.g.fresh = fresh;
      k.dy = cdata_of<F>(dya);
      k.dh_n = cdata_of<F>(dhn);
      k.dc_n = cdata_of<F>(dcn);
      k.y = cdata_of<F>(ya);
      k.workspace = cdata_of<F>(wsa);
      k.saved_steps = T;
      cell_backward(cell, k);
    });
    if (lstm) return py::make_tuple(dx, dh0, dc0, gw_ih, gw_hh, gb_ih, gb_hh);
    return py::make_tuple(dx, dh0, gw_ih, gw_hh, gb_ih, gb_hh);
  }
};

// ---------------------------------------------------------------- LSTM
py::tuple lstm_forward_py(py::handle x, py::handle h0, py::handle c0, py::handle w_ih,
                          py::handle w_hh, py::handle b_ih, py::handle b_hh, bool training) {
  return CellCall(CellKind::lstm, x, h0, w_ih, w_hh).forward(c0, b_ih, b_hh, training);
}

py::tuple lstm_backward_py(py::handle x, py::handle h0, py::handle c0, py::handle w_ih,
                           py::handle w_hh, py::handle y, py::handle workspace, py::handle dy,
                           py::handle dh_n, py::handle dc_n, py::handle dw_ih, py::handle dw_hh,
                           py::handle db_ih, py::handle db_hh, bool input_grad, py::handle frozen) {
  return CellCall(CellKind::lstm, x, h0, w_ih, w_hh)
      .backward(c0, y, workspace, "T*B*5*hidden_size", dy, dh_n, dc_n, dw_ih, dw_hh, db_ih, db_hh,
                input_grad, frozen);
}

// ---------------------------------------------------------------- GRU
py::tuple gru_forward_py(py::handle x, py::handle h0, py::handle w_ih, py::handle w_hh,
                         py::handle b_ih, py::handle b_hh, bool reset_after, bool training) {
  CellCall a(CellKind::gru, x, h0, w_ih, w_hh);
  a.shape.reset_after = reset_after;
  return a.forward(py::none(), b_ih, b_hh, training);
}

py::tuple gru_backward_py(py::handle x, py::handle h0, py::handle w_ih, py::handle w_hh,
                          py::handle y, py::handle workspace, py::handle dy, py::handle dh_n,
                          bool reset_after, py::handle dw_ih, py::handle dw_hh, py::handle db_ih,
                          py::handle db_hh, bool input_grad, py::handle frozen) {
  CellCall a(CellKind::gru, x, h0, w_ih, w_hh);
  a.shape.reset_after = reset_after;
  return a.backward(py::none(), y, workspace, "T*B*4*hidden_size", dy, dh_n, py::none(), dw_ih,
                    dw_hh, db_ih, db_hh, input_grad, frozen);
}

// ---------------------------------------------------------------- RNN
py::tuple rnn_forward_py(py::handle x, py::handle h0, py::handle w_ih, py::handle w_hh,
                         py::handle b_ih, py::handle b_hh, const std::string& nonlinearity,
                         bool training) {
  const RnnActivation act = parse_nonlinearity(nonlinearity);
  CellCall a(CellKind::rnn, x, h0, w_ih, w_hh);
  a.shape.act = act;
  return a.forward(py::none(), b_ih, b_hh, training);  // the workspace: empty (training)
}

py::tuple rnn_backward_py(py::handle x, py::handle h0, py::handle w_ih, py::handle w_hh,
                          py::handle y, py::handle workspace, py::handle dy, py::handle dh_n,
                          const std::string& nonlinearity, py::handle dw_ih, py::handle dw_hh,
                          py::handle db_ih, py::handle db_hh, bool input_grad, py::handle frozen) {
  const RnnActivation act = parse_nonlinearity(nonlinearity);
  CellCall a(CellKind::rnn, x, h0, w_ih, w_hh);
  a.shape.act = act;
  return a.backward(py::none(), y, workspace, "0", dy, dh_n, py::none(), dw_ih, dw_hh, db_ih, db_hh,
                    input_grad, frozen);
}

}  // namespace

void bind_recurrent_cell(py::module_& m) {
  using namespace pybind11::literals;
  m.def("lstm_forward", &lstm_forward_py, "x"_a, "h0"_a, "c0"_a, "weight_ih"_a, "weight_hh"_a,
        "bias_ih"_a, "bias_hh"_a, "training"_a = true);
  m.def("lstm_backward", &lstm_backward_py, "x"_a, "h0"_a, "c0"_a, "weight_ih"_a, "weight_hh"_a,
        "y"_a, "workspace"_a, "dy"_a, "dh_n"_a, "dc_n"_a, "dweight_ih"_a, "dweight_hh"_a,
        "dbias_ih"_a, "dbias_hh"_a, "input_grad"_a = true, "frozen"_a = py::tuple());
  m.def("gru_forward", &gru_forward_py, "x"_a, "h0"_a, "weight_ih"_a, "weight_hh"_a, "bias_ih"_a,
        "bias_hh"_a, "reset_after"_a = true, "training"_a = true);
  m.def("gru_backward", &gru_backward_py, "x"_a, "h0"_a, "weight_ih"_a, "weight_hh"_a, "y"_a,
        "workspace"_a, "dy"_a, "dh_n"_a, "reset_after"_a, "dweight_ih"_a, "dweight_hh"_a,
        "dbias_ih"_a, "dbias_hh"_a, "input_grad"_a = true, "frozen"_a = py::tuple());
  m.def("rnn_forward", &rnn_forward_py, "x"_a, "h0"_a, "weight_ih"_a, "weight_hh"_a, "bias_ih"_a,
        "bias_hh"_a, "nonlinearity"_a = "tanh", "training"_a = true);
  m.def("rnn_backward", &rnn_backward_py, "x"_a, "h0"_a, "weight_ih"_a, "weight_hh"_a, "y"_a,
        "workspace"_a, "dy"_a, "dh_n"_a, "nonlinearity"_a, "dweight_ih"_a, "dweight_hh"_a,
        "dbias_ih"_a, "dbias_hh"_a, "input_grad"_a = true, "frozen"_a = py::tuple());
  m.def(
      "lstm_workspace_size",
      [](int64_t T, int64_t B, int64_t H, int64_t P) { return lstm_workspace_size(T, B, H, P); },
      "T"_a, "B"_a, "H"_a, "P"_a = 0);
  m.def("gru_workspace_size", &gru_workspace_size, "T"_a, "B"_a, "H"_a);
}

}  // namespace fusedrnn
