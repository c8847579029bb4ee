// pybind11 bindings of the layer-stack driver (csrc/stack.h). The Python wrapper
// (fusedrnn/functional.py: stack_forward / stack_backward) sorts the batch by length and builds
// batch_sizes; everything is checked again here, since a wrong size would read out of bounds.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "bindings/checks.h"
#include "common/isa_table.h"
#include "stack.h"

namespace fusedrnn {
namespace {

// A uint16 array of `size` elements that starts on a cache line (numpy aligns to 16 bytes only),
// a view of a larger one: a panel row's vector load (64 bytes on AVX-512) then never spans two
// lines. On a Xeon with AVX-512, a GRU inference with bfloat16 weights 16 bytes off a line took
// 0.95 ms against 0.63 (B=1, T=100, H=256, 1 thread).
py::array_t<uint16_t> line_aligned_uint16(int64_t size) {
  constexpr int64_t line = 64, per_line = line / sizeof(uint16_t);
  py::array_t<uint16_t> storage(size + per_line);
  const auto address = reinterpret_cast<std::uintptr_t>(storage.data());
  const int64_t skip = static_cast<int64_t>((line - address % line) % line / sizeof(uint16_t));
  return py::array_t<uint16_t>({size}, {int64_t(sizeof(uint16_t))}, storage.mutable_data() + skip,
                               storage);
}

HalfFormat parse_half_format(const std::string& format) {
  if (format == "float16") return HalfFormat::float16;
  if (format == "bfloat16") return HalfFormat::bfloat16;
  throw py::value_error("the format of 16-bit weights must be 'float16' or 'bfloat16', got '" +
                        format + "'");
}

std::string param_name(const char* kind, int64_t layer, int64_t direction) {
  return std::string(kind) + "_l" + std::to_string(layer) + (direction ? "_reverse" : "");
}

CellKind cell_of(const std::string& mode) {
  if (mode == "lstm") return CellKind::lstm;
  if (mode == "gru") return CellKind::gru;
  if (mode == "rnn") return CellKind::rnn;
  throw py::value_error("mode must be 'lstm', 'gru' or 'rnn', got '" + mode + "'");
}

StackShape stack_shape(CellKind cell, int64_t T, int64_t B, int64_t I, int64_t H, int64_t proj,
                       int64_t layers, bool bidirectional) {
  // (the GRU and RNN variants: their defaults; the callers that run a stack set them)
  return StackShape{{T, B, I, H, proj}, cell, layers, bidirectional ? 2 : 1};
}

// Everything one stack call needs besides the arrays it returns.
struct StackCall {
  StackShape shape;
  ArgChecker checker;
  py::array x, h0;
  py::object c0, masks, batch_sizes, lengths;
  std::vector<py::object> keep;  // the weight arrays the pointers below point into

  StackCall(const std::string& mode, py::handle x_, py::handle h0_, py::handle c0_,
            py::handle masks_, py::handle batch_sizes_, py::handle lengths_, int64_t num_layers,
            bool bidirectional, int64_t hidden, int64_t proj, bool reset_after,
            const std::string& nonlinearity, py::handle cell_options)
      : checker(x_, "x") {
    const CellKind cell = cell_of(mode);
    const RnnActivation act = parse_nonlinearity(nonlinearity);
    if (num_layers < 1)
      throw py::value_error("num_layers must be >= 1, got " + std::to_string(num_layers));
    if (hidden < 1)
      throw py::value_error("hidden_size must be >= 1, got " + std::to_string(hidden));
    if (proj < 0 || proj >= hidden || (proj && cell != CellKind::lstm))
      throw py::value_error(
          "proj_size must be 0, or (LSTM only) between 1 and hidden_size - 1; got " +
          std::to_string(proj));
    py::array xa = py::reinterpret_borrow<py::array>(x_);
    if (xa.ndim() != 3)
      throw py::value_error("x must have 3 dimensions (T, B, input_size), but has " +
                            std::to_string(xa.ndim()));
    shape = stack_shape(cell, xa.shape(0), xa.shape(1), xa.shape(2), hidden, proj, num_layers,
                        bidirectional);
    shape.reset_after = reset_after;
    shape.act = act;
    shape.options = parse_cell_options(cell_options, 0);
    shape.reverse_options = parse_cell_options(cell_options, 1);
    if (shape.input < 1) throw py::value_error("x must have input_size >= 1, but has 0");
    const int64_t T = shape.steps, B = shape.batch, R = shape.out(),
                  LD = num_layers * shape.directions;
    check_blas_dim(T * B, "T*B (the rows of x)");
    check_blas_dim(shape.input, "input_size");
    check_blas_dim(shape.gates() * hidden, "the gate width");
    if (num_layers > 1)
      check_blas_dim(shape.directions * R,
                     "num_directions*hidden_size (the input of a layer past the first)");
    check_buffers_fit();  // before anything is copied or allocated
    x = checker.input(x_, "x", {{"T", T}, {"B", B}, {"input_size", shape.input}});
    h0 = checker.input(
        h0_, "h0", {{"num_layers*num_directions", LD}, {"B", B}, {"proj_size or hidden_size", R}});
    c0 = shape.cell == CellKind::lstm
             ? py::object(checker.input(
                   c0_, "c0",
                   {{"num_layers*num_directions", LD}, {"B", B}, {"hidden_size", hidden}}))
             : py::none();
    masks = num_layers > 1
                ? checker.optional_input(masks_, "dropout_masks",
                                         {{"num_layers-1", num_layers - 1},
                                          {"T", T},
                                          {"B", B},
                                          {"num_directions*hidden_size", shape.directions * R}})
                : py::none();
    check_packing(batch_sizes_, lengths_);
  }

  // The int64 sizes of the saved and scratch buffers (stack_layout.h) are products of L, D, T, B
  // and the widths; each factor is bounded, their product is not. Refuse, as a MemoryError,
  // sizes whose buffers no machine can hold, before any of those products can overflow.
  void check_buffers_fit() const {
    // In long double: no factor or product can overflow it (L alone may be up to 2**63), and a
    // bound needs no more precision.
    using Wide = long double;
    const Wide L = static_cast<Wide>(shape.layers), D = static_cast<Wide>(shape.directions);
    const Wide rows = static_cast<Wide>(shape.steps) * static_cast<Wide>(shape.batch) + 1;
    const Wide H = static_cast<Wide>(shape.hidden), R = static_cast<Wide>(shape.out());
    const Wide W = static_cast<Wide>(std::max(shape.input, shape.directions * shape.out()));
    const Wide B = static_cast<Wide>(shape.batch) + 1;
    // Generous bounds of stack_saved_size and of the two scratch sizes, plus y, h_n, c_n, dx.
    const Wide bound =
        (L * D + L + 8) * rows * (8 * H + 8 * W + 8) + (L * D + 8) * B * (2 * H + 2 * R + 8);
    const Wide limit = 1152921504606846976.0L;  // 2**60 elements: 2**62 bytes of float32 and beyond
    if (bound > limit) {
      const std::string message = "a " + std::to_string(shape.layers) +
                                  "-layer stack over T*B = " + std::to_string(shape.steps) + "*" +
                                  std::to_string(shape.batch) + " rows with hidden_size " +
                                  std::to_string(shape.hidden) +
                                  " needs buffers of more than 2**60 elements, which cannot "
                                  "be allocated";
      PyErr_SetString(PyExc_MemoryError, message.c_str());
      throw py::error_already_set();
    }
  }

  // batch_sizes [T] and lengths [B] (int64, both or neither): lengths non-increasing in 1..T and
  // batch_sizes[t] = #{b: lengths[b] > t}, as the kernels rely on.
  void check_packing(py::handle batch_sizes_, py::handle lengths_) {
    if (batch_sizes_.is_none() != lengths_.is_none())
      throw py::value_error("batch_sizes and lengths come together or not at all");
    batch_sizes = py::none();
    lengths = py::none();
    if (lengths_.is_none()) return;
    const int64_t T = shape.steps, B = shape.batch;
    auto as_int64 = [](py::handle obj, const char* name, int64_t n) {
      if (!py::isinstance<py::array_t<int64_t>>(obj) ||
          !py::reinterpret_borrow<py::array>(obj).dtype().equal(py::dtype::of<int64_t>()))
        throw py::type_error(std::string(name) + " must be an int64 numpy.ndarray");
      // contiguous and aligned: the checks below and the kernels read it through an int64_t*
      py::array a =
          py::module_::import("numpy").attr("require")(obj, py::none(), py::make_tuple("C", "A"));
      if (a.ndim() != 1 || a.shape(0) != n)
        throw py::value_error(std::string(name) + " must have shape (" + std::to_string(n) + ",)");
      return a;
    };
    py::array bs = as_int64(batch_sizes_, "batch_sizes", T);
    py::array len = as_int64(lengths_, "lengths", B);
    const int64_t* l = static_cast<const int64_t*>(len.data());
    const int64_t* s = static_cast<const int64_t*>(bs.data());
    for (int64_t b = 0; b < B; ++b)
      if (l[b] < 1 || l[b] > T || (b && l[b] > l[b - 1]))
        throw py::value_error("lengths must be sorted longest first, each in 1..T");
    for (int64_t t = 0, b = B; t < T; ++t) {
      while (b > 0 && l[b - 1] <= t) --b;
      if (s[t] != b) throw py::value_error("batch_sizes does not match lengths");
    }
    batch_sizes = bs;
    lengths = len;
  }

  // What the kernel's forward and backward both read. Called with the GIL released: no
  // reference counting (see data_of).
  template <typename F>
  StackInputs<F> inputs(const std::vector<LayerWeights<F>>& w) const {
    return {cdata_of<F>(x),
            cdata_of<F>(h0),
            cdata_of<F>(c0),
            w.data(),
            cdata_of<F>(masks),
            cdata_of<int64_t>(batch_sizes),
            cdata_of<int64_t>(lengths)};
  }

  // body(entry, layer, direction) for each entry of `list` (the weights or the grads): one tuple
  // per layer and direction, layer-major, as functional.py's _per_layer builds them.
  template <typename Body>
  void for_each_layer(py::handle list, const char* what, Body&& body) const {
    py::list items = py::reinterpret_borrow<py::list>(list);
    const int64_t LD = shape.layers * shape.directions;
    if (static_cast<int64_t>(items.size()) != LD)
      throw py::value_error(std::string(what) + " must hold " + std::to_string(LD) +
                            " layer entries");
    for (int64_t k = 0; k < LD; ++k)
      body(py::reinterpret_borrow<py::tuple>(items[k]), k / shape.directions, k % shape.directions);
  }

  // The weights of every layer and direction, checked by their PyTorch names.
  template <typename T>
  std::vector<LayerWeights<T>> weights(py::handle list) {
    const int64_t G = shape.gates() * shape.hidden, R = shape.out();
    std::vector<LayerWeights<T>> out;
    for_each_layer(list, "weights", [&](py::tuple w, int64_t l, int64_t d) {
      const std::string n_ih = param_name("weight_ih", l, d), n_hh = param_name("weight_hh", l, d);
      const std::string n_bi = param_name("bias_ih", l, d), n_bh = param_name("bias_hh", l, d);
      const std::string n_hr = param_name("weight_hr", l, d);
      const std::string n_p = param_name("weight_peephole", l, d);
      py::array w_ih =
          checker.input(w[0], n_ih.c_str(),
                        {{"gates*hidden_size", G}, {"layer input size", shape.layer_input(l)}});
      py::array w_hh = checker.input(w[1], n_hh.c_str(),
                                     {{"gates*hidden_size", G}, {"proj_size or hidden_size", R}});
      py::object b_ih = checker.optional_input(w[2], n_bi.c_str(), {{"gates*hidden_size", G}});
      py::object b_hh = checker.optional_input(w[3], n_bh.c_str(), {{"gates*hidden_size", G}});
      py::object w_hr =
          shape.proj
              ? py::object(checker.input(
                    w[4], n_hr.c_str(), {{"proj_size", shape.proj}, {"hidden_size", shape.hidden}}))
              : py::none();
      py::object peephole = peephole_of(w, n_p.c_str());
      for (py::object o : {py::object(w_ih), py::object(w_hh), b_ih, b_hh, w_hr, peephole})
        keep.push_back(o);
      out.push_back({cdata_of<T>(w_ih), cdata_of<T>(w_hh), cdata_of<T>(b_ih), cdata_of<T>(b_hh),
                     cdata_of<T>(w_hr), cdata_of<T>(peephole)});
    });
    return out;
  }

  // Zoneout and recurrent dropout (recurrent_noise.h) from what fusedrnn/_recurrent_noise.py's
  // RecurrentNoise.kernel_args gives: None, or (zoneout_h, zoneout_c, recurrent_dropout, seed,
  // sample, first_step, row_ids [B] int64 or None). They need the options' pass, which they
  // enable.
  void set_noise(py::handle noise) {
    if (noise.is_none()) return;
    const py::tuple spec = py::reinterpret_borrow<py::tuple>(noise);
    if (spec.size() != 7)
      throw py::value_error(
          "noise must be (zoneout_h, zoneout_c, recurrent_dropout, seed, sample, first_step, "
          "row_ids)");
    RecurrentNoise n;
    n.zoneout_h = spec[0].cast<double>();
    n.zoneout_c = spec[1].cast<double>();
    n.recurrent_dropout = spec[2].cast<double>();
    n.seed = spec[3].cast<uint64_t>();
    n.sample = spec[4].cast<bool>();
    n.first_step = spec[5].cast<int64_t>();
    if (n.first_step < 0 || n.first_step >= (int64_t(1) << 32))
      throw py::value_error("first_step must be in [0, 2**32)");
    for (double p : {n.zoneout_h, n.zoneout_c, n.recurrent_dropout})
      if (!(p >= 0 && p < 1))
        throw py::value_error("zoneout and recurrent_dropout must be in [0, 1)");
    if (shape.cell == CellKind::rnn && (n.zoneout() || n.recurrent_dropout > 0))
      throw py::value_error("zoneout and recurrent_dropout apply to an LSTM or a GRU");
    if (n.zoneout_c > 0 && shape.cell != CellKind::lstm)
      throw py::value_error("zoneout_cell applies to an LSTM only");
    if (shape.proj && (n.zoneout() || n.recurrent_dropout > 0))
      throw py::value_error("zoneout and recurrent_dropout need proj_size = 0");
    if (!shape.reset_after && n.recurrent_dropout > 0)
      throw py::value_error("recurrent_dropout needs reset_after=True (PyTorch's GRU)");
    if (!spec[6].is_none()) {
      py::array_t<int64_t> ids = spec[6].cast<py::array_t<int64_t>>();
      if (ids.ndim() != 1 || ids.shape(0) != shape.batch || !(ids.flags() & py::array::c_style))
        throw py::value_error("row_ids must be a contiguous int64 array (B,)");
      keep.push_back(ids);
      n.row_ids = ids.data();
    }
    if (!n.any()) return;  // (eval: recurrent dropout does nothing)
    shape.options.noise = shape.reverse_options.noise = n;
    shape.options.enabled = shape.reverse_options.enabled = true;
  }

  // An inference's 16-bit weights (weights_dtype): (format, panel_width, amx, one tuple per layer
  // and direction of uint16 panels: w_ih, w_hh and w_hr (or None) from pack_half_panels, then the
  // same three from pack_amx_panels when amx, else None), checked against the stack's sizes, the
  // active instruction set's panel width and whether AMX is active; pointed to by `weights`.
  // None: the float weights. Float32 inference only.
  std::vector<HalfLayerWeights> half_weights(py::handle spec, bool training) {
    std::vector<HalfLayerWeights> out;
    if (spec.is_none()) return out;
    if (!checker.is_float32())
      throw py::type_error("16-bit weights (weights_dtype) need float32 arrays, got " +
                           checker.dtype_name());
    if (training)
      throw py::value_error(
          "16-bit weights (weights_dtype) are for inference: training must be False");
    py::tuple t = py::reinterpret_borrow<py::tuple>(spec);
    if (t.size() != 4)
      throw py::value_error("half_weights must be (format, panel_width, amx, layers)");
    const HalfFormat format = parse_half_format(py::str(t[0]));
    const int64_t nr = t[1].cast<int64_t>(), active_nr = step_gemm_kernels<float>().panel_width;
    if (nr != active_nr)
      throw py::value_error("half_weights were packed for panels of " + std::to_string(nr) +
                            " columns, but the active instruction set takes " +
                            std::to_string(active_nr) + ": pack them again");
    const bool amx = t[2].cast<bool>();
    if (amx != (format == HalfFormat::bfloat16 && amx_active()))
      throw py::value_error(std::string("half_weights were packed ") + (amx ? "with" : "without") +
                            " AMX's panels, but AMX is " +
                            (amx_active() ? "active" : "not active") + ": pack them again");
    const int64_t G = shape.gates(), H = shape.hidden, R = shape.out(), P = shape.proj;
    auto panels = [&](py::handle obj, const std::string& name, int64_t K, int64_t blocks,
                      int64_t cols, bool amx_layout = false) {
      if (!py::isinstance<py::array_t<uint16_t>>(obj) ||
          !py::reinterpret_borrow<py::array>(obj).dtype().equal(py::dtype::of<uint16_t>()))
        throw py::type_error(name + " must be a uint16 numpy.ndarray");
      py::array a = py::reinterpret_borrow<py::array>(obj);
      const int64_t size =
          amx_layout ? amx_panels_size(K, blocks, cols) : half_panels_size(K, blocks, cols, nr);
      if (a.ndim() != 1 || a.shape(0) != size || !(a.flags() & py::array::c_style))
        throw py::value_error(
            name + " must be a contiguous array of " + std::to_string(size) +
            (amx_layout ? " elements (pack_amx_panels)" : " elements (pack_half_panels)"));
      keep.push_back(a);
      return static_cast<const uint16_t*>(a.data());
    };
    for_each_layer(t[3], "half_weights", [&](py::tuple w, int64_t l, int64_t d) {
      if (w.size() != 6)
        throw py::value_error(
            "half_weights' layers must be (w_ih, w_hh, w_hr, w_ih_amx, "
            "w_hh_amx, w_hr_amx) tuples");
      HalfLayerWeights h;
      h.format = format;
      // Each matrix: AMX's panels when packed so (amx), else (None, a matrix with an infinite
      // weight, or no AMX) the FMA panels.
      auto matrix = [&](int at, const char* role, int64_t K, int64_t blocks, int64_t cols,
                        const uint16_t** fma, const uint16_t** tiles) {
        if (amx && !w[at + 3].is_none())
          *tiles = panels(w[at + 3], std::string("AMX ") + param_name(role, l, d), K, blocks, cols,
                          true);
        else
          *fma = panels(w[at], std::string("half ") + param_name(role, l, d), K, blocks, cols);
      };
      matrix(0, "weight_ih", shape.layer_input(l), G, H, &h.w_ih, &h.w_ih_amx);
      matrix(1, "weight_hh", R, G, H, &h.w_hh, &h.w_hh_amx);
      if (P) matrix(2, "weight_hr", H, 1, P, &h.w_hr, &h.w_hr_amx);
      out.push_back(h);
    });
    return out;
  }

  // An LSTM layer's peepholes [3H] (p_i, p_f, p_o): the weights tuple's sixth entry, or None.
  // They need the options' pass, which they enable (with PyTorch's activations if none given).
  py::object peephole_of(py::tuple w, const char* name) {
    if (w.size() < 6 || w[5].is_none()) return py::none();
    if (shape.cell != CellKind::lstm)
      throw py::value_error(std::string(name) + ": only an LSTM has peepholes");
    shape.options.enabled = shape.reverse_options.enabled = true;
    return checker.input(w[5], name, {{"3*hidden_size", 3 * shape.hidden}});
  }

  // The gradient buffers, same structure, accumulated into in place; None: not wanted (a frozen
  // parameter, or one the layer does not have), not computed.
  template <typename T>
  std::vector<LayerGrads<T>> grads(py::handle list) {
    const int64_t G = shape.gates() * shape.hidden, R = shape.out();
    std::vector<LayerGrads<T>> out;
    for_each_layer(list, "grads", [&](py::tuple g, int64_t l, int64_t d) {
      auto acc = [&](py::handle obj, const char* kind,
                     std::initializer_list<Dim> dims) -> py::object {
        if (obj.is_none()) return py::none();
        const std::string name = "grads['" + param_name(kind, l, d) + "']";
        return checker.accumulator(obj, name.c_str(), dims);
      };
      py::object dw_ih =
          acc(g[0], "weight_ih",
              {{"gates*hidden_size", G}, {"layer input size", shape.layer_input(l)}});
      py::object dw_hh =
          acc(g[1], "weight_hh", {{"gates*hidden_size", G}, {"proj_size or hidden_size", R}});
      py::object db_ih = acc(g[2], "bias_ih", {{"gates*hidden_size", G}});
      py::object db_hh = acc(g[3], "bias_hh", {{"gates*hidden_size", G}});
      py::object dw_hr =
          acc(g[4], "weight_hr", {{"proj_size", shape.proj}, {"hidden_size", shape.hidden}});
      py::object dpeephole =
          g.size() > 5 ? acc(g[5], "weight_peephole", {{"3*hidden_size", 3 * shape.hidden}})
                       : py::none();
      for (py::object o : {dw_ih, dw_hh, db_ih, db_hh, dw_hr, dpeephole}) keep.push_back(o);
      out.push_back({data_of<T>(dw_ih), data_of<T>(dw_hh), data_of<T>(db_ih), data_of<T>(db_hh),
                     data_of<T>(dw_hr), data_of<T>(dpeephole)});
    });
    return out;
  }
};

py::tuple stack_forward_py(const std::string& mode, py::handle x, py::handle h0, py::handle c0,
                           py::handle weights, py::handle dropout_masks, py::handle batch_sizes,
                           py::handle lengths, int64_t num_layers, bool bidirectional,
                           int64_t hidden, int64_t proj, bool reset_after,
                           const std::string& nonlinearity, bool training, py::handle cell_options,
                           py::handle noise, py::handle half_weights) {
  StackCall call(mode, x, h0, c0, dropout_masks, batch_sizes, lengths, num_layers, bidirectional,
                 hidden, proj, reset_after, nonlinearity, cell_options);
  call.set_noise(noise);
  const std::vector<HalfLayerWeights> half = call.half_weights(half_weights, training);
  const StackShape& s = call.shape;
  const int64_t T = s.steps, B = s.batch, LD = s.layers * s.directions;
  const ArgChecker& c = call.checker;
  py::array y = c.output({T, B, s.directions * s.out()}), h_n = c.output({LD, B, s.out()});
  const bool lstm = s.cell == CellKind::lstm;
  py::object c_n = lstm ? py::object(c.output({LD, B, s.hidden})) : py::none();
  py::object saved = training ? py::object(c.output({stack_saved_size(s)})) : py::none();
  const ScratchMemory scratch = c.scratch(stack_forward_scratch_size(s, training));
  dispatch_dtype(call.checker, [&](auto tag) {
    using F = decltype(tag);
    auto w = call.weights<F>(weights);
    for (size_t i = 0; i < half.size(); ++i) w[i].half = &half[i];
    py::gil_scoped_release release;
    StackForwardArgs<F> k;
    k.y = data_of<F>(y);
    k.h_n = data_of<F>(h_n);
    k.c_n = data_of<F>(c_n);
    k.in = call.inputs<F>(w);
    k.saved = data_of<F>(saved);
    k.scratch = scratch.data<F>();
    k.shape = s;
    stack_forward(k);
  });
  return py::make_tuple(y, h_n, c_n, saved);
}

py::tuple stack_backward_py(const std::string& mode, py::handle x, py::handle h0, py::handle c0,
                            py::handle weights, py::handle y, py::handle saved, py::handle dy,
                            py::handle dh_n, py::handle dc_n, py::handle grads,
                            py::handle dropout_masks, py::handle batch_sizes, py::handle lengths,
                            int64_t num_layers, bool bidirectional, int64_t hidden, int64_t proj,
                            bool reset_after, const std::string& nonlinearity, int64_t truncate,
                            int64_t stride, py::handle cell_options, py::handle noise,
                            bool input_grad, bool state_grad) {
  if (truncate < 0 || stride < 0 || (truncate && (stride < 1 || stride > truncate)))
    throw py::value_error(
        "truncate and truncate_stride must satisfy 1 <= truncate_stride <= "
        "truncate, got truncate=" +
        std::to_string(truncate) + ", truncate_stride=" + std::to_string(stride));
  if (truncate && bidirectional)
    throw py::value_error("truncated backpropagation through time needs a unidirectional layer");
  StackCall call(mode, x, h0, c0, dropout_masks, batch_sizes, lengths, num_layers, bidirectional,
                 hidden, proj, reset_after, nonlinearity, cell_options);
  call.set_noise(noise);
  const StackShape& s = call.shape;
  const int64_t T = s.steps, B = s.batch, LD = s.layers * s.directions, W = s.directions * s.out();
  const ArgChecker& c = call.checker;
  const bool lstm = s.cell == CellKind::lstm;
  if (saved.is_none())
    throw py::value_error(
        "saved is None: backward needs what a training forward (training=True) saved");
  py::array ya = c.input(y, "y", {{"T", T}, {"B", B}, {"num_directions*hidden_size", W}});
  py::array sa = c.input(saved, "saved", {{"saved size", stack_saved_size(s)}});
  py::object dya =
      c.optional_input(dy, "dy", {{"T", T}, {"B", B}, {"num_directions*hidden_size", W}});
  py::object dhn = c.optional_input(
      dh_n, "dh_n",
      {{"num_layers*num_directions", LD}, {"B", B}, {"proj_size or hidden_size", s.out()}});
  py::object dcn =
      lstm ? c.optional_input(
                 dc_n, "dc_n",
                 {{"num_layers*num_directions", LD}, {"B", B}, {"hidden_size", s.hidden}})
           : py::none();
  // input_grad false: dx is None, not computed (layer 0's dgates W_ih is skipped)
  py::object dx = input_grad ? py::object(c.output({T, B, s.input})) : py::none();
  py::array dh0 = c.output({LD, B, s.out()});
  py::object dc0 = lstm ? py::object(c.output({LD, B, s.hidden})) : py::none();
  const ScratchMemory scratch = c.scratch(stack_backward_scratch_size(s));
  dispatch_dtype(call.checker, [&](auto tag) {
    using F = decltype(tag);
    auto w = call.weights<F>(weights);
    auto g = call.grads<F>(grads);
    py::gil_scoped_release release;
    StackBackwardArgs<F> k;
    k.dx = data_of<F>(dx);
    k.dh0 = data_of<F>(dh0);
    k.dc0 = data_of<F>(dc0);
    k.grads = g.data();
    k.dy = cdata_of<F>(dya);
    k.dh_n = cdata_of<F>(dhn);
    k.dc_n = cdata_of<F>(dcn);
    k.in = call.inputs<F>(w);
    k.saved = cdata_of<F>(sa);
    k.scratch = scratch.data<F>();
    k.shape = s;
    k.truncate = truncate;
    k.stride = stride;
    k.state_grads = state_grad;
    stack_backward(k);
  });
  // state_grad false: dh0 and dc0 are not wanted (None; the layers below the lowest one with a
  // parameter gradient are skipped when dx is not wanted either)
  if (!state_grad) return py::make_tuple(dx, py::none(), py::none());
  return py::make_tuple(dx, dh0, dc0);
}

}  // namespace

void bind_stack(py::module_& m) {
  using namespace pybind11::literals;
  m.def(
      "stack_saved_size",
      [](const std::string& mode, int64_t T, int64_t B, int64_t I, int64_t H, int64_t proj,
         int64_t layers, bool bidirectional, py::handle cell_options) {
        StackShape s = stack_shape(cell_of(mode), T, B, I, H, proj, layers, bidirectional);
        s.options = parse_cell_options(cell_options, 0);
        return stack_saved_size(s);
      },
      "mode"_a, "T"_a, "B"_a, "I"_a, "H"_a, "proj_size"_a, "num_layers"_a, "bidirectional"_a,
      "cell_options"_a = py::none(),
      "Elements of the `saved` array a training stack_forward keeps.");
  m.def("stack_forward", &stack_forward_py, "mode"_a, "x"_a, "h0"_a, "c0"_a, "weights"_a,
        "dropout_masks"_a, "batch_sizes"_a, "lengths"_a, "num_layers"_a, "bidirectional"_a,
        "hidden_size"_a, "proj_size"_a, "reset_after"_a, "nonlinearity"_a, "training"_a,
        "cell_options"_a = py::none(), "noise"_a = py::none(), "half_weights"_a = py::none());
  m.def(
      "step_panel_width", [] { return step_gemm_kernels<float>().panel_width; },
      "Columns of a float step-GEMM panel on the active instruction set.");
  m.def(
      "pack_half_panels",
      [](py::array_t<uint16_t, py::array::c_style | py::array::forcecast> w, int64_t blocks,
         const std::string& format) {
        if (w.ndim() != 2 || blocks < 1 || w.shape(0) % blocks)
          throw py::value_error("w must be a 2-D uint16 array of blocks*cols rows");
        const int64_t K = w.shape(1), cols = w.shape(0) / blocks;
        const int64_t nr = step_gemm_kernels<float>().panel_width;
        py::array_t<uint16_t> packed = line_aligned_uint16(half_panels_size(K, blocks, cols, nr));
        pack_half_panels(packed.mutable_data(), w.data(), K, blocks, cols, nr,
                         parse_half_format(format));
        return packed;
      },
      "w"_a, "blocks"_a, "format"_a,
      "The bits of 16-bit weights W [blocks*cols, K] as the panels of W^T the kernels read "
      "(for the active instruction set's step_panel_width), starting on a 64-byte boundary.");
  m.def(
      "pack_amx_panels",
      [](py::array_t<uint16_t, py::array::c_style | py::array::forcecast> w, int64_t blocks) {
        if (w.ndim() != 2 || blocks < 1 || w.shape(0) % blocks)
          throw py::value_error("w must be a 2-D uint16 array of blocks*cols rows");
        const int64_t K = w.shape(1), cols = w.shape(0) / blocks;
        py::array_t<uint16_t> packed = line_aligned_uint16(amx_panels_size(K, blocks, cols));
        pack_amx_panels(packed.mutable_data(), w.data(), K, blocks, cols);
        return packed;
      },
      "w"_a, "blocks"_a,
      "The bits of bfloat16 weights W [blocks*cols, K] as the AMX tiles of W^T that an "
      "inference's products read (amx_active()), starting on a 64-byte boundary.");
  m.def("amx_usable", &amx_usable,
        "Whether this CPU and OS let fusedrnn use AMX's bfloat16 tiles (Intel Xeon from Sapphire "
        "Rapids on, Linux 5.16 on).");
  m.def("amx_active", &amx_active,
        "Whether inference with bfloat16 weights multiplies on AMX now: usable, not switched "
        "off, and the AVX-512 path active.");
  m.def("_set_amx_enabled", &set_amx_enabled, "enabled"_a,
        "Let AMX serve bfloat16 inference (True, the default) or not (tests and benchmarks "
        "compare the two paths).");
  m.def("stack_backward", &stack_backward_py, "mode"_a, "x"_a, "h0"_a, "c0"_a, "weights"_a, "y"_a,
        "saved"_a, "dy"_a, "dh_n"_a, "dc_n"_a, "grads"_a, "dropout_masks"_a, "batch_sizes"_a,
        "lengths"_a, "num_layers"_a, "bidirectional"_a, "hidden_size"_a, "proj_size"_a,
        "reset_after"_a, "nonlinearity"_a, "truncate"_a = 0, "truncate_stride"_a = 0,
        "cell_options"_a = py::none(), "noise"_a = py::none(), "input_grad"_a = true,
        "state_grad"_a = true);
}

}  // namespace fusedrnn
