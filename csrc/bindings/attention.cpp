// pybind11 bindings of the attention kernels (csrc/attention.h): checks and allocation, then one
// call into C++ with the GIL released. The Python side (fusedrnn/functional.py) broadcasts the
// batch dimensions and the mask and flattens them to the shapes checked here.
#include <algorithm>
#include <string>

#include "attention.h"
#include "attention_half.h"
#include "bindings/checks.h"
#include "common/attention_layout.h"
#include "common/threading.h"

namespace fusedrnn {
namespace {

std::string str(int64_t v) { return std::to_string(v); }

py::array rank4(py::handle obj, const char* name, const char* layout) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (a.ndim() != 4)
    throw py::value_error(std::string(name) + " must have 4 dimensions " + layout + ", but has " +
                          str(a.ndim()));
  return a;
}

// The attention arrays of one call, checked: q [N,Hq,L,E], k [N,Hkv,S,E], v [N,Hkv,S,Ev].
struct AttentionCall {
  ArgChecker checker;
  AttentionShape shape;
  AttentionOptions options;
  py::array q, k, v;
  // the mask: the array read, its offsets, and the kernel's view of both
  py::object mask_array, mask_offsets;
  AttentionMask mask;
  py::object key_lengths;  // kept alive for options.key_lengths
  // q, k, v (and out) of 16 bits: 0 none, 1 float16, 2 bfloat16 (their bits as uint16 arrays;
  // the arithmetic, lse and an additive mask in float32)
  int half = 0;

  AttentionCall(py::handle q_, py::handle k_, py::handle v_, py::handle mask_, py::handle offsets_,
                int64_t row_stride, int64_t col_stride, bool causal, double scale, double dropout_p,
                uint64_t seed, py::dict extra = py::dict(), int half_ = 0)
      : checker(half_ ? py::handle(py::array_t<float>(0)) : q_, "q"), half(half_) {
    py::array qa = rank4(q_, "q", "(N, Hq, L, E)");
    py::array ka = rank4(k_, "k", "(N, Hkv, S, E)");
    py::array va = rank4(v_, "v", "(N, Hkv, S, Ev)");
    shape.batch = qa.shape(0);
    shape.heads_q = qa.shape(1);
    shape.L = qa.shape(2);
    shape.E = qa.shape(3);
    shape.heads_kv = ka.shape(1);
    shape.S = ka.shape(2);
    shape.Ev = va.shape(3);
    if (shape.heads_kv < 1 || shape.heads_q % shape.heads_kv != 0)
      throw py::value_error(
          "the query heads Hq = " + str(shape.heads_q) +
          " must be a multiple of the key/value heads Hkv = " + str(shape.heads_kv));
    const int64_t N = shape.batch, Hq = shape.heads_q, Hkv = shape.heads_kv;
    // Before input() copies a non-contiguous q, k, v: a broadcast view too big for the BLAS is
    // refused, not first copied.
    for (int64_t d : {shape.L, shape.S, shape.E, shape.Ev}) check_blas_dim(d, "an attention size");
    q = input(q_, "q", {{"N", N}, {"Hq", Hq}, {"L", shape.L}, {"E", shape.E}});
    k = input(k_, "k", {{"N", N}, {"Hkv", Hkv}, {"S", shape.S}, {"E", shape.E}});
    v = input(v_, "v", {{"N", N}, {"Hkv", Hkv}, {"S", shape.S}, {"Ev", shape.Ev}});
    if (!(dropout_p >= 0 && dropout_p <= 1))
      throw py::value_error("dropout_p must be in [0, 1], got " + std::to_string(dropout_p));
    options = {scale, causal, dropout_p, seed};
    set_extra(extra);
    shape.threads = get_num_threads();
    set_mask(mask_, offsets_, row_stride, col_stride);
  }

  // A 16-bit input (bits in a uint16 array, C-contiguous: the wrapper copies) or a float one.
  py::array input(py::handle obj, const char* name, std::initializer_list<Dim> dims) const {
    if (!half) return checker.input(obj, name, dims);
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().equal(py::dtype::of<uint16_t>()))
      throw py::type_error(std::string(name) + " must hold 16-bit values as uint16, got " +
                           std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style))
      throw py::value_error(std::string(name) + " must be C-contiguous (the wrapper copies it)");
    int64_t axis = 0;
    for (const Dim& d : dims)
      if (a.shape(axis++) != d.size)
        throw py::value_error(std::string(name) + " must have " + d.name + " = " + str(d.size));
    return a;
  }

  // The options past torch's: alignment, window, soft-cap and the keys of each item.
  void set_extra(const py::dict& extra) {
    for (auto item : extra) {
      const std::string key = py::str(item.first);
      if (key == "bottom_right") {
        options.bottom_right = py::cast<bool>(item.second);
      } else if (key == "query_offset") {
        options.query_offset = py::cast<int64_t>(item.second);
      } else if (key == "window") {
        options.window = py::cast<int64_t>(item.second);
        if (options.window < 0) throw py::value_error("window must be >= 0 (0: none)");
      } else if (key == "softcap") {
        options.softcap = py::cast<double>(item.second);
        if (!(options.softcap >= 0 && options.softcap < 1e300))
          throw py::value_error("softcap must be finite and >= 0 (0: none)");
      } else if (key == "key_lengths") {
        if (item.second.is_none()) continue;
        py::array_t<int64_t> lengths = py::cast<py::array_t<int64_t>>(item.second);
        if (lengths.ndim() != 1 || lengths.shape(0) != shape.batch ||
            !(lengths.flags() & py::array::c_style))
          throw py::value_error("key_lengths must be a contiguous int64 array of N = " +
                                str(shape.batch) + " entries");
        const int64_t* l = lengths.data();
        for (int64_t n = 0; n < shape.batch; ++n)
          if (l[n] < 0 || l[n] > shape.S)
            throw py::value_error("key_lengths must be in [0, S = " + str(shape.S) + "], got " +
                                  str(l[n]));
        key_lengths = lengths;
        options.key_lengths = l;
      } else {
        throw py::type_error("unknown attention option " + key);
      }
    }
  }

  void set_mask(py::handle mask_, py::handle offsets_, int64_t row_stride, int64_t col_stride) {
    if (mask_.is_none()) return;
    if (!py::isinstance<py::array>(mask_))
      throw py::type_error("attn_mask must be a numpy.ndarray or None");
    py::array m = py::reinterpret_borrow<py::array>(mask_);
    const bool boolean = m.dtype().equal(py::dtype::of<bool>());
    if (!boolean &&
        !m.dtype().equal(checker.is_float32() ? py::dtype::of<float>() : py::dtype::of<double>()))
      throw py::type_error("attn_mask must have dtype bool or " + checker.dtype_name() +
                           " like q, got " + std::string(py::str(m.dtype())));
    // The kernel and the checks below read both through typed pointers: a misaligned one (a view
    // at an odd byte offset) would be undefined behaviour, so it is refused like a strided one.
    constexpr auto aligned = py::detail::npy_api::NPY_ARRAY_ALIGNED_;
    if (!(m.flags() & py::array::c_style) || !(m.flags() & aligned))
      throw py::value_error("attn_mask must be C-contiguous and aligned (the wrapper copies it)");
    py::array_t<int64_t> off = py::cast<py::array_t<int64_t>>(offsets_);
    const int64_t heads = shape.batch * shape.heads_q;
    if (off.ndim() != 1 || off.shape(0) != heads || !(off.flags() & py::array::c_style) ||
        !(off.flags() & aligned))
      throw py::value_error("mask_offsets must be a contiguous, aligned int64 array of N*Hq = " +
                            str(heads) + " entries");
    if (col_stride != 0 && col_stride != 1)
      throw py::value_error("mask col_stride must be 0 or 1, got " + str(col_stride));
    if (row_stride < 0) throw py::value_error("mask row_stride must be >= 0");
    // every element the kernel may read lies inside the mask
    const int64_t size = static_cast<int64_t>(m.size());
    const int64_t* o = off.data();
    if (heads > 0 && shape.L > 0 && shape.S > 0) {
      const int64_t lo = *std::min_element(o, o + heads), hi = *std::max_element(o, o + heads);
      const int64_t last = hi + (shape.L - 1) * row_stride + (shape.S - 1) * col_stride;
      if (lo < 0 || last >= size)
        throw py::value_error("the mask offsets and strides reach outside attn_mask");
    }
    mask_array = m;
    mask_offsets = off;
    mask.kind = boolean ? MaskKind::boolean : MaskKind::additive;
    mask.data = m.data();
    mask.offsets = o;
    mask.row_stride = row_stride;
    mask.col_stride = col_stride;
  }
};

py::tuple attention_forward_py(py::handle q, py::handle k, py::handle v, py::handle mask,
                               py::handle offsets, int64_t row_stride, int64_t col_stride,
                               bool causal, double scale, double dropout_p, uint64_t seed,
                               py::dict extra, std::string half) {
  const int half_kind = half.empty() ? 0 : half == "float16" ? 1 : half == "bfloat16" ? 2 : -1;
  if (half_kind < 0) throw py::value_error("half must be '', 'float16' or 'bfloat16'");
  AttentionCall c(q, k, v, mask, offsets, row_stride, col_stride, causal, scale, dropout_p, seed,
                  extra, half_kind);
  const AttentionShape& s = c.shape;
  if (half_kind) {
    py::array out = py::array(py::dtype::of<uint16_t>(), {s.batch, s.heads_q, s.L, s.Ev});
    py::array lse = c.checker.output({s.batch, s.heads_q, s.L});
    const ScratchMemory scratch =
        c.checker.scratch(attention_forward_scratch_size(s, causal, true));
    void* out_bits = out.mutable_data();
    const void *q_bits = c.q.data(), *k_bits = c.k.data(), *v_bits = c.v.data();
    dispatch_dtype(c.checker, [&](auto) {
      py::gil_scoped_release release;
      auto run = [&](auto tag) {
        using H = decltype(tag);
        attention_forward_half<H>(static_cast<H*>(out_bits), data_of<float>(lse),
                                  scratch.data<float>(), static_cast<const H*>(q_bits),
                                  static_cast<const H*>(k_bits), static_cast<const H*>(v_bits),
                                  c.mask, s, c.options);
      };
      if (half_kind == 1)
        run(float16_bits{});
      else
        run(bfloat16_bits{});
    });
    return py::make_tuple(out, lse);
  }
  py::array out = c.checker.output({s.batch, s.heads_q, s.L, s.Ev});
  py::array lse = c.checker.output({s.batch, s.heads_q, s.L});
  const ScratchMemory scratch = c.checker.scratch(attention_forward_scratch_size(s, causal));
  dispatch_dtype(c.checker, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    attention_forward<F>(data_of<F>(out), data_of<F>(lse), scratch.data<F>(), cdata_of<F>(c.q),
                         cdata_of<F>(c.k), cdata_of<F>(c.v), c.mask, s, c.options);
  });
  return py::make_tuple(out, lse);
}

py::tuple attention_backward_py(py::handle d_out, py::handle q, py::handle k, py::handle v,
                                py::handle out, py::handle lse, py::handle mask, py::handle offsets,
                                int64_t row_stride, int64_t col_stride, bool causal, double scale,
                                double dropout_p, uint64_t seed, py::dict extra) {
  AttentionCall c(q, k, v, mask, offsets, row_stride, col_stride, causal, scale, dropout_p, seed,
                  extra);
  const AttentionShape& s = c.shape;
  const int64_t N = s.batch, Hq = s.heads_q;
  py::array da = c.checker.input(d_out, "d_out", {{"N", N}, {"Hq", Hq}, {"L", s.L}, {"Ev", s.Ev}});
  py::array oa = c.checker.input(out, "out", {{"N", N}, {"Hq", Hq}, {"L", s.L}, {"Ev", s.Ev}});
  py::array la = c.checker.input(lse, "lse", {{"N", N}, {"Hq", Hq}, {"L", s.L}});
  py::array dq = c.checker.output({N, Hq, s.L, s.E});
  py::array dk = c.checker.output({N, s.heads_kv, s.S, s.E});
  py::array dv = c.checker.output({N, s.heads_kv, s.S, s.Ev});
  const ScratchMemory scratch =
      c.checker.scratch(attention_backward_scratch_size(s, causal, c.options.window));
  dispatch_dtype(c.checker, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    attention_backward<F>(data_of<F>(dq), data_of<F>(dk), data_of<F>(dv), scratch.data<F>(),
                          cdata_of<F>(da), cdata_of<F>(c.q), cdata_of<F>(c.k), cdata_of<F>(c.v),
                          c.mask, cdata_of<F>(oa), cdata_of<F>(la), s, c.options);
  });
  return py::make_tuple(dq, dk, dv);
}

// ---------------------------------------------------------------- additive attention
struct AdditiveCall {
  ArgChecker checker;
  int64_t B, T, S, Dq, Dk, Dv, A;
  py::array query, keys, values, w_q, w_k, w_v;
  py::object key_mask;

  AdditiveCall(py::handle query_, py::handle keys_, py::handle values_, py::handle w_q_,
               py::handle w_k_, py::handle w_v_, py::handle key_mask_)
      : checker(query_, "query") {
    auto dims3 = [](py::handle obj, const char* name, const char* layout) {
      if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(name) + " must be a numpy.ndarray");
      py::array a = py::reinterpret_borrow<py::array>(obj);
      if (a.ndim() != 3)
        throw py::value_error(std::string(name) + " must have 3 dimensions " + layout +
                              ", but has " + str(a.ndim()));
      return a;
    };
    py::array qa = dims3(query_, "query", "(B, T, query_size)");
    py::array ka = dims3(keys_, "keys", "(B, S, key_size)");
    py::array va = dims3(values_, "values", "(B, S, value_size)");
    if (!py::isinstance<py::array>(w_v_) || py::reinterpret_borrow<py::array>(w_v_).ndim() != 1)
      throw py::value_error("w_v must be a 1-D numpy.ndarray (hidden_size,)");
    B = qa.shape(0);
    T = qa.shape(1);
    Dq = qa.shape(2);
    S = ka.shape(1);
    Dk = ka.shape(2);
    Dv = va.shape(2);
    A = py::reinterpret_borrow<py::array>(w_v_).shape(0);
    // Every size the GEMMs take, before input() copies a non-contiguous argument.
    check_blas_dim(B * T, "B*T");
    check_blas_dim(B * S, "B*S");
    check_blas_dim(A, "hidden_size");
    check_blas_dim(Dq, "query_size");
    check_blas_dim(Dk, "key_size");
    check_blas_dim(Dv, "value_size");
    query = checker.input(query_, "query", {{"B", B}, {"T", T}, {"query_size", Dq}});
    keys = checker.input(keys_, "keys", {{"B", B}, {"S", S}, {"key_size", Dk}});
    values = checker.input(values_, "values", {{"B", B}, {"S", S}, {"value_size", Dv}});
    w_q = checker.input(w_q_, "w_q", {{"hidden_size", A}, {"query_size", Dq}});
    w_k = checker.input(w_k_, "w_k", {{"hidden_size", A}, {"key_size", Dk}});
    w_v = checker.input(w_v_, "w_v", {{"hidden_size", A}});
    if (!key_mask_.is_none()) {
      if (!py::isinstance<py::array>(key_mask_) ||
          !py::reinterpret_borrow<py::array>(key_mask_).dtype().equal(py::dtype::of<bool>()))
        throw py::type_error("key_mask must be a bool numpy.ndarray (True = may attend) or None");
      py::array m = py::reinterpret_borrow<py::array>(key_mask_);
      if (m.ndim() != 2 || m.shape(0) != B || m.shape(1) != S)
        throw py::value_error("key_mask must have shape (B, S) = (" + str(B) + ", " + str(S) + ")");
      key_mask = py::module_::import("numpy").attr("ascontiguousarray")(m);
    } else {
      key_mask = py::none();
    }
  }
  // The sizes, for a team of `threads`.
  AdditiveShape shape(int threads) const { return {B, T, S, Dq, Dk, Dv, A, threads}; }
  // What the forward and backward kernels both read. Called with the GIL released: no reference
  // counting (see data_of).
  template <typename F>
  AdditiveInputs<F> inputs() const {
    return {cdata_of<F>(query), cdata_of<F>(keys), cdata_of<F>(values),        cdata_of<F>(w_q),
            cdata_of<F>(w_k),   cdata_of<F>(w_v),  cdata_of<uint8_t>(key_mask)};
  }
};

py::tuple additive_forward_py(py::handle query, py::handle keys, py::handle values, py::handle w_q,
                              py::handle w_k, py::handle w_v, py::handle key_mask) {
  AdditiveCall c(query, keys, values, w_q, w_k, w_v, key_mask);
  py::array context = c.checker.output({c.B, c.T, c.Dv});
  py::array weights = c.checker.output({c.B, c.T, c.S});
  py::array qp = c.checker.output({c.B, c.T, c.A});
  py::array kp = c.checker.output({c.B, c.S, c.A});
  const AdditiveShape shape = c.shape(get_num_threads());
  const ScratchMemory scratch = c.checker.scratch(additive_attention_forward_scratch_size(shape));
  dispatch_dtype(c.checker, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    AdditiveForwardArgs<F> k;
    k.context = data_of<F>(context);
    k.weights = data_of<F>(weights);
    k.qp = data_of<F>(qp);
    k.kp = data_of<F>(kp);
    k.in = c.inputs<F>();
    k.scratch = scratch.data<F>();
    k.shape = shape;
    additive_attention_forward(k);
  });
  return py::make_tuple(context, weights, qp, kp);
}

py::tuple additive_backward_py(py::handle d_context, py::handle query, py::handle keys,
                               py::handle values, py::handle w_q, py::handle w_k, py::handle w_v,
                               py::handle key_mask, py::handle weights, py::handle qp,
                               py::handle kp, py::handle dw_q, py::handle dw_k, py::handle dw_v) {
  AdditiveCall c(query, keys, values, w_q, w_k, w_v, key_mask);
  const ArgChecker& k = c.checker;
  py::array dc = k.input(d_context, "d_context", {{"B", c.B}, {"T", c.T}, {"value_size", c.Dv}});
  py::array wa = k.input(weights, "weights", {{"B", c.B}, {"T", c.T}, {"S", c.S}});
  py::array qpa = k.input(qp, "qp", {{"B", c.B}, {"T", c.T}, {"hidden_size", c.A}});
  py::array kpa = k.input(kp, "kp", {{"B", c.B}, {"S", c.S}, {"hidden_size", c.A}});
  py::array dwq = k.accumulator(dw_q, "grads['w_q']", {{"hidden_size", c.A}, {"query_size", c.Dq}});
  py::array dwk = k.accumulator(dw_k, "grads['w_k']", {{"hidden_size", c.A}, {"key_size", c.Dk}});
  py::array dwv = k.accumulator(dw_v, "grads['w_v']", {{"hidden_size", c.A}});
  py::array dquery = k.output({c.B, c.T, c.Dq});
  py::array dkeys = k.output({c.B, c.S, c.Dk});
  py::array dvalues = k.output({c.B, c.S, c.Dv});
  const AdditiveShape shape = c.shape(get_num_threads());
  const ScratchMemory scratch = k.scratch(additive_attention_backward_scratch_size(shape));
  dispatch_dtype(k, [&](auto tag) {
    using F = decltype(tag);
    py::gil_scoped_release release;
    AdditiveBackwardArgs<F> b;
    b.d_query = data_of<F>(dquery);
    b.d_keys = data_of<F>(dkeys);
    b.d_values = data_of<F>(dvalues);
    b.dw_q = data_of<F>(dwq);
    b.dw_k = data_of<F>(dwk);
    b.dw_v = data_of<F>(dwv);
    b.d_context = cdata_of<F>(dc);
    b.in = c.inputs<F>();
    b.weights = cdata_of<F>(wa);
    b.qp = cdata_of<F>(qpa);
    b.kp = cdata_of<F>(kpa);
    b.scratch = scratch.data<F>();
    b.shape = shape;
    additive_attention_backward(b);
  });
  return py::make_tuple(dquery, dkeys, dvalues, dwq, dwk, dwv);
}

}  // namespace

void bind_attention(py::module_& m) {
  using namespace pybind11::literals;
  m.def(
      "attention_forward", &attention_forward_py, "q"_a, "k"_a, "v"_a, "mask"_a, "mask_offsets"_a,
      "mask_row_stride"_a, "mask_col_stride"_a, "is_causal"_a, "scale"_a, "dropout_p"_a, "seed"_a,
      "extra"_a = py::dict(), "half"_a = "",
      "Scaled dot-product attention on (N, H, L, E) arrays -> (out, lse); see csrc/attention.h. "
      "extra: bottom_right, query_offset, window, softcap, key_lengths [N]; half: '', 'float16' or "
      "'bfloat16' (q, k, v as uint16 bits, out too; lse float32).");
  m.def("attention_backward", &attention_backward_py, "d_out"_a, "q"_a, "k"_a, "v"_a, "out"_a,
        "lse"_a, "mask"_a, "mask_offsets"_a, "mask_row_stride"_a, "mask_col_stride"_a,
        "is_causal"_a, "scale"_a, "dropout_p"_a, "seed"_a, "extra"_a = py::dict(),
        "-> (dq, dk, dv); see csrc/attention.h.");
  m.def("additive_attention_forward", &additive_forward_py, "query"_a, "keys"_a, "values"_a,
        "w_q"_a, "w_k"_a, "w_v"_a, "key_mask"_a, "-> (context, weights, qp, kp)");
  m.def("additive_attention_backward", &additive_backward_py, "d_context"_a, "query"_a, "keys"_a,
        "values"_a, "w_q"_a, "w_k"_a, "w_v"_a, "key_mask"_a, "weights"_a, "qp"_a, "kp"_a, "dw_q"_a,
        "dw_k"_a, "dw_v"_a, "-> (d_query, d_keys, d_values, dw_q, dw_k, dw_v)");
  m.def(
      "_set_attention_tiles",
      [](int64_t block_q, int64_t block_k) {
        if (block_q < 0 || block_k < 0) throw py::value_error("tile sizes must be >= 0");
        set_attention_tiles(block_q, block_k);
      },
      "block_q"_a, "block_k"_a,
      "Testing knob: force the attention tile sizes (0, 0: the tuned ones).");
  m.def(
      "_set_attention_team_threshold",
      [](int64_t work) {
        if (work < 0) throw py::value_error("work must be >= 0");
        return attention_min_team_work().exchange(work);
      },
      "work"_a,
      "Testing knob: the multiply-adds from which an attention call uses a team (default 2**22); "
      "returns the previous value, to restore.");
  m.def(
      "_attention_tiles",
      [](bool causal) {
        AttentionShape s;
        const AttentionTiles f = attention_forward_tiles(s, causal);
        const AttentionTiles b = attention_backward_tiles(s, causal);
        return py::make_tuple(py::make_tuple(f.block_q, f.block_k),
                              py::make_tuple(b.block_q, b.block_k));
      },
      "causal"_a = false,
      "The tile sizes in use: ((fwd block_q, block_k), (bwd block_q, block_k)).");
}

}  // namespace fusedrnn
