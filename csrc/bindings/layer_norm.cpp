// pybind11 bindings of layer normalisation (layer_norm.h) and of the layer-normalised LSTM and
// GRU (ln_cell.h): checks and allocation, then one call into C++ with the GIL released. The
// Python wrappers are fusedrnn.functional.layer_norm_* and ln_lstm_* / ln_gru_*.
#include <string>

#include "bindings/checks.h"
#include "layer_norm.h"
#include "ln_cell.h"

namespace fusedrnn {
namespace {

// ---------------------------------------------------------------- LayerNorm over rows

// x as M rows of N values: a 2-D array of the call's dtype (ArgChecker checked its type).
py::array rows_of(const ArgChecker& c, py::handle x, int64_t& M, int64_t& N) {
  py::array xa = py::reinterpret_borrow<py::array>(x);
  if (xa.ndim() != 2)
    throw py::value_error("x must have 2 dimensions (M, N), but has " + std::to_string(xa.ndim()));
  M = xa.shape(0);
  N = xa.shape(1);
  check_blas_dim(M, "M (the rows of x)");
  return c.input(x, "x", {{"M", M}, {"N", N}});
}

py::tuple layer_norm_forward_py(py::handle x_, py::handle weight, py::handle bias, double eps,
                                bool training) {
  ArgChecker c(x_, "x");
  int64_t M, N;
  py::array xa = rows_of(c, x_, M, N);
  if (N == 0) throw py::value_error("x must have N >= 1 normalised values per row, but has 0");
  py::object w = c.optional_input(weight, "weight", {{"N", N}});
  py::object b = c.optional_input(bias, "bias", {{"N", N}});
  py::array y = c.output({M, N});
  py::object mean = training ? py::object(c.output({M})) : py::none();
  py::object rstd = training ? py::object(c.output({M})) : py::none();
  dispatch_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    layer_norm_forward<F>(data_of<F>(y), data_of<F>(mean), data_of<F>(rstd), cdata_of<F>(xa),
                          cdata_of<F>(w), cdata_of<F>(b), F(eps), M, N);
  });
  return py::make_tuple(y, mean, rstd);
}

py::tuple layer_norm_backward_py(py::handle dy_, py::handle x_, py::handle weight, py::handle mean_,
                                 py::handle rstd_, py::handle dweight, py::handle dbias,
                                 bool has_weight, bool has_bias) {
  ArgChecker c(x_, "x");
  int64_t M, N;
  py::array xa = rows_of(c, x_, M, N);
  py::array dy = c.input(dy_, "dy", {{"M", M}, {"N", N}});
  py::object w = c.optional_input(weight, "weight", {{"N", N}});
  py::array mean = c.input(mean_, "mean", {{"M", M}});
  py::array rstd = c.input(rstd_, "rstd", {{"M", M}});
  py::object gw =
      has_weight ? py::object(c.accumulator(dweight, "grads['weight']", {{"N", N}})) : py::none();
  py::object gb =
      has_bias ? py::object(c.accumulator(dbias, "grads['bias']", {{"N", N}})) : py::none();
  py::array dx = c.output({M, N});
  const ScratchMemory scratch = c.scratch(layer_norm_backward_scratch_size(M, N));
  dispatch_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    layer_norm_backward<F>(data_of<F>(dx), data_of<F>(gw), data_of<F>(gb), scratch.data<F>(),
                           cdata_of<F>(dy), cdata_of<F>(xa), cdata_of<F>(w), cdata_of<F>(mean),
                           cdata_of<F>(rstd), M, N);
  });
  return py::make_tuple(dx, gw, gb);
}

// ---------------------------------------------------------------- LN-LSTM and LN-GRU

// What every call of a layer-normalised cell shares, checked once: x [T,B,I], h0 [B,H] and the
// parameters in `weights` by role (the biases may be missing or None: zeros), with H read off
// weights['weight_hh'] [G,H].
struct LnCellCall {
  ArgChecker c;
  CellKind cell;
  CellShape shape;
  int64_t T, B, I, H, G;
  std::string gate_rows;
  py::array x, h0;
  py::dict arrays;  // the checked parameters by role (None for an absent bias)

  LnCellCall(CellKind kind, py::handle x_, py::handle h0_, py::handle weights)
      : c(x_, "x"), cell(kind), gate_rows(std::to_string(gates_of(kind)) + "*hidden_size") {
    if (!py::isinstance<py::dict>(weights))
      throw py::type_error("weights must be a dict of arrays by role");
    py::dict wd = py::reinterpret_borrow<py::dict>(weights);
    py::array xa = py::reinterpret_borrow<py::array>(x_);
    if (xa.ndim() != 3)
      throw py::value_error("x must have 3 dimensions (T, B, input_size), but has " +
                            std::to_string(xa.ndim()));
    if (!wd.contains("weight_hh") || !py::isinstance<py::array>(wd["weight_hh"]))
      throw py::type_error("weights['weight_hh'] must be a numpy.ndarray");
    py::array wa = py::reinterpret_borrow<py::array>(wd["weight_hh"]);
    const int64_t blocks = gates_of(kind);
    if (wa.ndim() != 2 || wa.shape(0) != blocks * wa.shape(1) || wa.shape(1) == 0)
      throw py::value_error("weights['weight_hh'] must have shape (" + gate_rows +
                            ", hidden_size) with hidden_size >= 1");
    T = xa.shape(0);
    B = xa.shape(1);
    I = xa.shape(2);
    H = wa.shape(1);
    G = blocks * H;
    if (I == 0) throw py::value_error("x must have input_size >= 1, but has 0");
    check_blas_dim(T * B, "T*B (the rows of x)");
    check_blas_dim(I, "input_size");
    check_blas_dim(G, "the gate width");
    shape.steps = T;
    shape.batch = B;
    shape.input = I;
    shape.hidden = H;
    x = c.input(x_, "x", {{"T", T}, {"B", B}, {"input_size", I}});
    h0 = state(h0_, "h0");
    const char* rows = gate_rows.c_str();
    param(wd, "weight_ih", {{rows, G}, {"input_size", I}}, false);
    param(wd, "weight_hh", {{rows, G}, {"hidden_size", H}}, false);
    param(wd, "ln_ih_weight", {{rows, G}}, false);
    param(wd, "ln_hh_weight", {{rows, G}}, false);
    if (kind == CellKind::lstm) {
      param(wd, "bias", {{rows, G}}, true);
      param(wd, "ln_cell_weight", {{"hidden_size", H}}, false);
      param(wd, "ln_cell_bias", {{"hidden_size", H}}, true);
    } else {
      param(wd, "bias_ih", {{rows, G}}, true);
      param(wd, "bias_hh", {{rows, G}}, true);
    }
  }

  void param(const py::dict& wd, const char* role, std::initializer_list<Dim> dims, bool optional) {
    const std::string name = "weights['" + std::string(role) + "']";
    const bool given = wd.contains(role) && !wd[role].is_none();
    if (!given && !optional) throw py::value_error(name + " is missing");
    arrays[role] = given ? py::object(c.input(wd[role], name.c_str(), dims)) : py::none();
  }
  py::array state(py::handle obj, const char* name) const {
    return c.input(obj, name, {{"B", B}, {"hidden_size", H}});
  }
  py::object optional_state(py::handle obj, const char* name) const {
    return c.optional_input(obj, name, {{"B", B}, {"hidden_size", H}});
  }
  // The gradient of a role, accumulated into grads[role] (fresh zeros when missing or None), or
  // None for a role the cell lacks (an absent bias) or whose gradient is not wanted (`frozen`:
  // a collection of roles; a frozen role's entry in grads, if any, is left as it is). The kernels
  // skip a null gradient.
  py::object accumulator(py::dict& grads, const char* role, std::initializer_list<Dim> dims,
                         py::handle frozen) {
    if (arrays[role].is_none() || frozen.contains(role)) return py::none();
    const std::string name = "grads['" + std::string(role) + "']";
    py::object given = grads.contains(role) ? py::object(grads[role]) : py::object(py::none());
    py::array a = c.accumulator(given, name.c_str(), dims);
    grads[role] = a;
    return a;
  }
  template <typename F>
  const F* weight(const char* role) const {
    return cdata_of<F>(arrays[role]);
  }
  py::object workspace(py::handle obj) const {
    if (obj.is_none())
      throw py::value_error(
          "workspace is None: backward needs the workspace that a training forward "
          "(training=True) returns");
    const int64_t size = ln_cell_workspace_size(cell, T, B, H);
    return c.input(obj, "workspace", {{"the workspace size", size}});
  }
  template <typename F>
  LnLstmStepParams<F> lstm_params(double eps) const {
    return {weight<F>("ln_ih_weight"),   weight<F>("ln_hh_weight"), weight<F>("bias"),
            weight<F>("ln_cell_weight"), weight<F>("ln_cell_bias"), F(eps)};
  }
  template <typename F>
  LnGruStepParams<F> gru_params(double eps) const {
    return {weight<F>("ln_ih_weight"), weight<F>("ln_hh_weight"), weight<F>("bias_ih"),
            weight<F>("bias_hh"), F(eps)};
  }
};

py::tuple ln_lstm_forward_py(py::handle x, py::handle h0, py::handle c0, py::handle weights,
                             double eps, bool training) {
  LnCellCall a(CellKind::lstm, x, h0, weights);
  py::array c0a = a.state(c0, "c0");
  auto& c = a.c;
  py::array y = c.output({a.T, a.B, a.H}), h_n = c.output({a.B, a.H}), c_n = c.output({a.B, a.H});
  py::object ws =
      training ? py::object(c.output({ln_cell_workspace_size(a.cell, a.T, a.B, a.H)})) : py::none();
  const ScratchMemory scratch = c.scratch(ln_cell_forward_scratch_size(a.cell, a.shape, training));
  dispatch_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    LnLstmForwardArgs<F> k;
    k.y = data_of<F>(y);
    k.h_n = data_of<F>(h_n);
    k.c_n = data_of<F>(c_n);
    k.x = cdata_of<F>(a.x);
    k.h0 = cdata_of<F>(a.h0);
    k.c0 = cdata_of<F>(c0a);
    k.w = {a.weight<F>("weight_ih"), a.weight<F>("weight_hh")};
    k.p = a.lstm_params<F>(eps);
    k.workspace = data_of<F>(ws);
    k.scratch = scratch.data<F>();
    k.shape = a.shape;
    py::gil_scoped_release release;
    ln_lstm_forward(k);
  });
  return py::make_tuple(y, h_n, c_n, ws);
}

py::tuple ln_lstm_backward_py(py::handle x, py::handle h0, py::handle c0, py::handle weights,
                              py::handle y, py::handle workspace, py::handle dy, py::handle dh_n,
                              py::handle dc_n, py::handle grads_, bool input_grad,
                              py::handle frozen) {
  LnCellCall a(CellKind::lstm, x, h0, weights);
  auto& c = a.c;
  py::array c0a = a.state(c0, "c0");
  py::array ya = c.input(y, "y", {{"T", a.T}, {"B", a.B}, {"hidden_size", a.H}});
  py::object wsa = a.workspace(workspace);
  py::object dya = c.optional_input(dy, "dy", {{"T", a.T}, {"B", a.B}, {"hidden_size", a.H}});
  py::object dhn = a.optional_state(dh_n, "dh_n"), dcn = a.optional_state(dc_n, "dc_n");
  py::dict grads = grads_.is_none() ? py::dict() : py::reinterpret_borrow<py::dict>(grads_);
  const char* rows = a.gate_rows.c_str();
  py::object gw_ih = a.accumulator(grads, "weight_ih", {{rows, a.G}, {"input_size", a.I}}, frozen);
  py::object gw_hh = a.accumulator(grads, "weight_hh", {{rows, a.G}, {"hidden_size", a.H}}, frozen);
  py::object gb = a.accumulator(grads, "bias", {{rows, a.G}}, frozen);
  py::object gg_ih = a.accumulator(grads, "ln_ih_weight", {{rows, a.G}}, frozen);
  py::object gg_hh = a.accumulator(grads, "ln_hh_weight", {{rows, a.G}}, frozen);
  py::object gg_c = a.accumulator(grads, "ln_cell_weight", {{"hidden_size", a.H}}, frozen);
  py::object gb_c = a.accumulator(grads, "ln_cell_bias", {{"hidden_size", a.H}}, frozen);
  // input_grad false: dx is None, not computed (as the plain cells' backward)
  py::object dx = input_grad ? py::object(c.output({a.T, a.B, a.I})) : py::none();
  py::array dh0 = c.output({a.B, a.H}), dc0 = c.output({a.B, a.H});
  const ScratchMemory scratch = c.scratch(ln_cell_backward_scratch_size(a.cell, a.shape));
  dispatch_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    LnLstmBackwardArgs<F> k;
    k.dx = data_of<F>(dx);
    k.dh0 = data_of<F>(dh0);
    k.dc0 = data_of<F>(dc0);
    k.g = {data_of<F>(gw_ih), data_of<F>(gw_hh), data_of<F>(gb),  data_of<F>(gg_ih),
           data_of<F>(gg_hh), data_of<F>(gg_c),  data_of<F>(gb_c)};
    k.dy = cdata_of<F>(dya);
    k.dh_n = cdata_of<F>(dhn);
    k.dc_n = cdata_of<F>(dcn);
    k.x = cdata_of<F>(a.x);
    k.h0 = cdata_of<F>(a.h0);
    k.y = cdata_of<F>(ya);
    k.w = {a.weight<F>("weight_ih"), a.weight<F>("weight_hh")};
    k.p = a.lstm_params<F>(0);  // (the backward reads the saved rstd, not eps)
    k.workspace = cdata_of<F>(wsa);
    k.scratch = scratch.data<F>();
    k.shape = a.shape;
    k.c0 = cdata_of<F>(c0a);
    py::gil_scoped_release release;
    ln_lstm_backward(k);
  });
  return py::make_tuple(dx, dh0, dc0, grads);
}

py::tuple ln_gru_forward_py(py::handle x, py::handle h0, py::handle weights, double eps,
                            bool training) {
  LnCellCall a(CellKind::gru, x, h0, weights);
  auto& c = a.c;
  py::array y = c.output({a.T, a.B, a.H}), h_n = c.output({a.B, a.H});
  py::object ws =
      training ? py::object(c.output({ln_cell_workspace_size(a.cell, a.T, a.B, a.H)})) : py::none();
  const ScratchMemory scratch = c.scratch(ln_cell_forward_scratch_size(a.cell, a.shape, training));
  dispatch_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    LnGruForwardArgs<F> k;
    k.y = data_of<F>(y);
    k.h_n = data_of<F>(h_n);
    k.x = cdata_of<F>(a.x);
    k.h0 = cdata_of<F>(a.h0);
    k.w = {a.weight<F>("weight_ih"), a.weight<F>("weight_hh")};
    k.p = a.gru_params<F>(eps);
    k.workspace = data_of<F>(ws);
    k.scratch = scratch.data<F>();
    k.shape = a.shape;
    py::gil_scoped_release release;
    ln_gru_forward(k);
  });
  return py::make_tuple(y, h_n, ws);
}

py::tuple ln_gru_backward_py(py::handle x, py::handle h0, py::handle weights, py::handle y,
                             py::handle workspace, py::handle dy, py::handle dh_n,
                             py::handle grads_, bool input_grad, py::handle frozen) {
  LnCellCall a(CellKind::gru, x, h0, weights);
  auto& c = a.c;
  py::array ya = c.input(y, "y", {{"T", a.T}, {"B", a.B}, {"hidden_size", a.H}});
  py::object wsa = a.workspace(workspace);
  py::object dya = c.optional_input(dy, "dy", {{"T", a.T}, {"B", a.B}, {"hidden_size", a.H}});
  py::object dhn = a.optional_state(dh_n, "dh_n");
  py::dict grads = grads_.is_none() ? py::dict() : py::reinterpret_borrow<py::dict>(grads_);
  const char* rows = a.gate_rows.c_str();
  py::object gw_ih = a.accumulator(grads, "weight_ih", {{rows, a.G}, {"input_size", a.I}}, frozen);
  py::object gw_hh = a.accumulator(grads, "weight_hh", {{rows, a.G}, {"hidden_size", a.H}}, frozen);
  py::object gb_ih = a.accumulator(grads, "bias_ih", {{rows, a.G}}, frozen);
  py::object gb_hh = a.accumulator(grads, "bias_hh", {{rows, a.G}}, frozen);
  py::object gg_ih = a.accumulator(grads, "ln_ih_weight", {{rows, a.G}}, frozen);
  py::object gg_hh = a.accumulator(grads, "ln_hh_weight", {{rows, a.G}}, frozen);
  py::object dx = input_grad ? py::object(c.output({a.T, a.B, a.I})) : py::none();
  py::array dh0 = c.output({a.B, a.H});
  const ScratchMemory scratch = c.scratch(ln_cell_backward_scratch_size(a.cell, a.shape));
  dispatch_dtype(c, [&](auto tag) {
    using F = decltype(tag);
    LnGruBackwardArgs<F> k;
    k.dx = data_of<F>(dx);
    k.dh0 = data_of<F>(dh0);
    k.g = {data_of<F>(gw_ih), data_of<F>(gw_hh), data_of<F>(gb_ih),
           data_of<F>(gb_hh), data_of<F>(gg_ih), data_of<F>(gg_hh)};
    k.dy = cdata_of<F>(dya);
    k.dh_n = cdata_of<F>(dhn);
    k.x = cdata_of<F>(a.x);
    k.h0 = cdata_of<F>(a.h0);
    k.y = cdata_of<F>(ya);
    k.w = {a.weight<F>("weight_ih"), a.weight<F>("weight_hh")};
    k.p = a.gru_params<F>(0);
    k.workspace = cdata_of<F>(wsa);
    k.scratch = scratch.data<F>();
    k.shape = a.shape;
    py::gil_scoped_release release;
    ln_gru_backward(k);
  });
  return py::make_tuple(dx, dh0, grads);
}

}  // namespace

void bind_layer_norm(py::module_& m) {
  using namespace pybind11::literals;
  m.def("layer_norm_forward", &layer_norm_forward_py, "x"_a, "weight"_a, "bias"_a, "eps"_a,
        "training"_a = true);
  m.def("layer_norm_backward", &layer_norm_backward_py, "dy"_a, "x"_a, "weight"_a, "mean"_a,
        "rstd"_a, "dweight"_a, "dbias"_a, "has_weight"_a, "has_bias"_a);
  m.def("ln_lstm_forward", &ln_lstm_forward_py, "x"_a, "h0"_a, "c0"_a, "weights"_a, "eps"_a,
        "training"_a = true);
  m.def("ln_lstm_backward", &ln_lstm_backward_py, "x"_a, "h0"_a, "c0"_a, "weights"_a, "y"_a,
        "workspace"_a, "dy"_a, "dh_n"_a, "dc_n"_a, "grads"_a, "input_grad"_a = true,
        "frozen"_a = py::tuple());
  m.def("ln_gru_forward", &ln_gru_forward_py, "x"_a, "h0"_a, "weights"_a, "eps"_a,
        "training"_a = true);
  m.def("ln_gru_backward", &ln_gru_backward_py, "x"_a, "h0"_a, "weights"_a, "y"_a, "workspace"_a,
        "dy"_a, "dh_n"_a, "grads"_a, "input_grad"_a = true, "frozen"_a = py::tuple());
  m.def(
      "ln_cell_workspace_size",
      [](const std::string& cell, int64_t T, int64_t B, int64_t H) {
        if (cell != "lstm" && cell != "gru")
          throw py::value_error("cell must be 'lstm' or 'gru', got '" + cell + "'");
        return ln_cell_workspace_size(cell == "lstm" ? CellKind::lstm : CellKind::gru, T, B, H);
      },
      "cell"_a, "T"_a, "B"_a, "H"_a);
}

}  // namespace fusedrnn
