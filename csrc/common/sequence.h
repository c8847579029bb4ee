// Pieces every recurrent cell's sequence driver shares (one place for each formula).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

#include "common/isa_table.h"
#include "common/step_gemm.h"
#include "common/threading.h"
#include "recurrent_cell.h"

namespace fusedrnn {

// dst[n] = src[n], or zeros when src is null (an absent gradient means zeros).
template <typename T>
void copy_or_zero(T* dst, const T* src, int64_t n) {
  if (n <= 0) return;
  if (src)
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
  else
    std::fill(dst, dst + n, T(0));
}

// out[j] = b_ih[j] + b_hh[j]: the two biases of a gate that enter only as a sum (an absent bias
// is zeros).
template <typename T>
void sum_biases(T* out, const T* b_ih, const T* b_hh, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = (b_ih ? b_ih[j] : T(0)) + (b_hh ? b_hh[j] : T(0));
}

// The kernels' big GEMMs (over all steps) run on a team of their own, each member taking a share.
// A Team names this member.
struct Team {
  int member = 0, members = 1;
  int64_t begin(int64_t n) const { return share_begin(n, member, members); }
  int64_t end(int64_t n) const { return share_begin(n, member + 1, members); }
};

// out[j] += sum over rows of a[r, j] for this member's columns j, and the same into out2 unless
// it is null (the two biases of a gate, whose gradients are the same sums: a is read once); a has
// row stride lda. Either output may be null. `fresh`: the outputs hold nothing yet, so = instead
// of += (LayerGrads::fresh).
template <typename T>
void add_column_sums(const Team& team, T* out, T* out2, const T* a, int64_t rows, int64_t cols,
                     int64_t lda, bool fresh = false) {
  if (!out) std::swap(out, out2);
  if (!out) return;
  const int64_t j0 = team.begin(cols), j1 = team.end(cols);
  if (fresh) {
    std::fill(out + j0, out + j1, T(0));
    if (out2) std::fill(out2 + j0, out2 + j1, T(0));
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = a + r * lda;
    if (out2)
      for (int64_t j = j0; j < j1; ++j) {
        out[j] += row[j];
        out2[j] += row[j];
      }
    else
      for (int64_t j = j0; j < j1; ++j) out[j] += row[j];
  }
}
template <typename T>
void add_column_sums(const Team& team, T* out, const T* a, int64_t rows, int64_t cols, int64_t lda,
                     bool fresh = false) {
  add_column_sums(team, out, static_cast<T*>(nullptr), a, rows, cols, lda, fresh);
}

// How a team shares one GEMM over all steps, out [rows, cols] = A [rows, K] B [K, cols] (cols in
// panels of nr): each member its rows, in whole tiles of kGemmShareRows, with every panel, when
// out has more rows than columns or its panels do not spread evenly over the members; else each
// member its panels of the columns. Each output element is the same sum either way (a tile's
// rows do not change it: csrc/step_gemm.inc).
// - By rows every member reads all of B, by columns all of A: the longer side of out is the one
//   to split, so that the member's copy is of the smaller operand. A weight gradient
//   (dW [G, I] = dgates^T x, G = 3H or 4H) then reads half of dgates per member instead of all
//   of it, and dx [T*B, I] = dgates W_ih of many rows half of dgates. Measured (Xeon, AVX-512,
//   2 threads, the backward of one layer): LSTM (16, 50, 128) 0.88x the time, (32, 100, 256)
//   0.93x, (64, 50, 512) 0.97x, GRU alike; a weight gradient alone by rows 0.93-0.96x at every
//   size, a single step's included; dx by rows at 32 and 100 rows 1.12x and 1.04x.
// - Panels that do not spread evenly leave members idle: 200 columns are 7 panels of 32 on
//   AVX-512, 4 and 3 on 2 threads, so the dx and weight-gradient GEMMs of an LSTM at H = 200 ran
//   at 7/8 of the team's rate by columns.
constexpr int64_t kGemmShareRows = 8;
struct GemmShare {
  bool by_rows = false;
  PanelShare columns;          // this member's panels (by rows: all of them)
  int64_t row0 = 0, rows = 0;  // this member's rows
  // The panels this member packs of a B read in place (in_place_panels packs the partial last
  // one of those it is given): by rows one member packs it for all, before a team_barrier().
  PanelShare packs;
};
inline GemmShare gemm_share(const Team& team, int64_t rows, int64_t cols, int64_t nr) {
  GemmShare s;
  const int64_t panels = ceil_div(cols, nr);
  s.by_rows = team.members > 1 && rows >= 2 * kGemmShareRows * team.members &&
              (rows > cols || panels % team.members != 0);
  if (!s.by_rows) {
    s.columns = s.packs = panel_share(cols, nr, team.member, team.members);
    s.rows = rows;
    return s;
  }
  s.columns = panel_share(cols, nr, 0, 1);
  if (team.member == 0) s.packs = s.columns;
  const int64_t tiles = ceil_div(rows, kGemmShareRows);
  s.row0 = std::min(rows, share_begin(tiles, team.member, team.members) * kGemmShareRows);
  s.rows =
      std::min(rows, share_begin(tiles, team.member + 1, team.members) * kGemmShareRows) - s.row0;
  return s;
}
// After packing the partial last panel of a B read in place: by rows every member reads it.
inline void wait_for_packs(const GemmShare& share) {
  if (share.by_rows) team_barrier();
}

// A weight gradient over all steps, this member's share of it (gemm_share):
//   dw [G, cols] (+)= dgates^T @ b,  dgates [K, G] (row stride ldg), b [K, cols] read in place
// (its partial last panel packed into `tail` [tail_panel_size(K)]); dw has row stride ldw.
// accumulate false: dw is set (LayerGrads::fresh).
template <typename T>
void weight_gradient(const Team& team, T* dw, int64_t ldw, T* tail, const T* dgates, int64_t ldg,
                     int64_t G, const T* b, int64_t K, int64_t cols, bool accumulate) {
  const auto& kernel = step_gemm_kernels<T>();
  const GemmShare share = gemm_share(team, G, cols, kernel.panel_width);
  const PackedWeights<T> panels = in_place_panels(kernel, b, cols, K, cols, tail, share.packs);
  wait_for_packs(share);
  // A = dgates^T: this member's rows of A are its columns of dgates
  step_gemm(kernel, panels, 0, 1, share.columns, share.rows, dgates + share.row0, ldg,
            dw + share.row0 * ldw, ldw, accumulate, true);
}

// Scratch of input_gradients and recurrent_weight_gradient: the packed last panels of the
// matrices they read in place.
inline int64_t input_gradients_scratch_size(int64_t G, int64_t rows) {
  return tail_panel_size(G) + tail_panel_size(rows);
}
inline int64_t recurrent_weight_gradient_scratch_size(int64_t steps, int64_t B) {
  return tail_panel_size(B) + tail_panel_size(std::max<int64_t>(steps - 1, 0) * B);
}

// The gradients of an input projection over all steps, with the step kernel, the GEMM's rows
// being `rows` = T*B:
//   forward: gates = x W_ih^T   ->   dx = dgates W_ih (=),  dW_ih += dgates^T x
// dgates [rows, G] (row stride ldg), x [rows, I], w_ih [G, I], dw_ih [G, I]; either dx or dw_ih
// may be null (not wanted: not computed). `fresh`: dw_ih holds nothing yet, so = instead of +=
// (LayerGrads::fresh; rows > 0).
template <typename T>
void input_gradients(const Team& team, T* dx, T* dw_ih, T* scratch, const T* dgates, int64_t ldg,
                     int64_t G, const T* x, const T* w_ih, int64_t rows, int64_t I,
                     bool fresh = false) {
  if (dx) {  // out [rows, I]
    const auto& kernel = step_gemm_kernels<T>();
    const GemmShare share = gemm_share(team, rows, I, kernel.panel_width);
    const PackedWeights<T> w = in_place_panels(kernel, w_ih, I, G, I, scratch, share.packs);
    wait_for_packs(share);
    step_gemm(kernel, w, 0, 1, share.columns, share.rows, dgates + share.row0 * ldg, ldg,
              dx + share.row0 * I, I, false);
  }
  if (dw_ih)
    weight_gradient(team, dw_ih, I, scratch + tail_panel_size(G), dgates, ldg, G, x, rows, I,
                    !fresh);
}

// The gradient of the recurrent weights over all steps, this member's share of dw:
//   dw[G,H] += sum_t dgates[t]^T @ h_{t-1},  h_{t-1} = y[t-1] for t >= 1 and h0 for t = 0,
// where dgates is [T*B, G] with row stride ldg, y [T,B,H], h0 [B,H] and dw has row stride ldw
// (null: not wanted, nothing computed). `fresh`: dw holds nothing yet, so the first step's
// product sets it (LayerGrads::fresh; steps * B > 0).
template <typename T>
void recurrent_weight_gradient(const Team& team, T* dw, int64_t ldw, T* scratch, const T* dgates,
                               int64_t ldg, int64_t G, const T* y, const T* h0, int64_t steps,
                               int64_t B, int64_t H, bool fresh = false) {
  if (steps == 0 || !dw) return;
  weight_gradient(team, dw, ldw, scratch, dgates, ldg, G, h0, B, H, !fresh);
  if (steps > 1)
    weight_gradient(team, dw, ldw, scratch + tail_panel_size(B), dgates + B * ldg, ldg, G, y,
                    (steps - 1) * B, H, true);
}

// This member's weights of a forward's GEMM with B = W^T, W [blocks*cols, K]: the layer's
// 16-bit panels of W, packed ahead, when it has them (`half` non-null: nothing to pack here), or
// its `share` of the panels of w, packed now into `packed` [packed_weights_size(K, blocks, cols)].
// `in_place` (in_place_step): w is to be read as it is (StepWeights), for a single step of few
// rows.
enum class InPlace { no, dot_rows, transposed };
template <typename T>
StepWeights<T> step_weights(const HalfLayerWeights* half, const uint16_t* half_panels, T* packed,
                            const T* w, int64_t K, int64_t blocks, int64_t cols,
                            const PanelShare& share, InPlace in_place = InPlace::no,
                            const uint16_t* amx_panels = nullptr) {
  StepWeights<T> weights;
  weights.kernel = &step_gemm_kernels<T>();
  const int64_t nr = weights.kernel->panel_width;
  if (half) {
    weights.multiply_half = half_step_gemm(half->format);
    weights.half = packed_half_panels(half_panels, K, blocks, cols, nr);
    weights.amx = amx_panels;
  } else if (in_place != InPlace::no) {
    weights.in_place = w;
    weights.in_place_K = K;
    weights.in_place_cols = cols;
    weights.in_place_transposed = in_place == InPlace::transposed;
  } else {
    weights.native = pack_weights(*weights.kernel, packed, w, 1, K, K, blocks, cols, share);
  }
  return weights;
}

// A single step of few rows reads a weight matrix [G, K] in place (StepWeights), in training as
// in inference (the two then give the same bits); how many rows depends on the matrix's size,
// weight_bytes (every gate), so W_ih and W_hh are judged each by its own; and how
// (transposed_step_fits) on the step's rows B.
template <typename T>
InPlace in_place_step(int64_t steps, int64_t B, int64_t K, int64_t weight_bytes) {
  if (steps != 1) return InPlace::no;
  const bool transposed = transposed_step_fits(step_gemm_kernels<T>(), B, K);
  const int64_t max_rows = weight_bytes >= kInPlaceWeightBytes ? kMaxInPlaceRowsLargeWeights
                           : transposed                        ? kMaxTransposedInPlaceRows
                                                               : kMaxInPlaceRows;
  if (B > max_rows) return InPlace::no;
  return transposed ? InPlace::transposed : InPlace::dot_rows;
}
struct InPlaceWeights {
  InPlace ih = InPlace::no, hh = InPlace::no;  // W_ih [G, I], W_hh [G, R]
};
template <typename T>
InPlaceWeights in_place_weights(int64_t steps, int64_t B, int64_t G, int64_t I, int64_t R) {
  const int64_t bytes = G * int64_t(sizeof(T));
  return {in_place_step<T>(steps, B, I, bytes * I), in_place_step<T>(steps, B, R, bytes * R)};
}

// out[rows, blocks*H] (row stride ldo) = x[rows, I] @ W_ih^T (+ out if accumulate), W_ih
// [blocks*H, I]: the input projection of all steps at once (rows = T*B), or a dense layer, in one
// GEMM on a team of its own sized by the work, each member packing (into packed
// [packed_weights_size(I, blocks, H)]) and multiplying its panels of W_ih^T.
// The rows go in chunks of about kStopCheckWork multiply-adds (a millisecond or two), between
// which the call may stop (stop_requested): a long sequence's projection takes seconds. Each
// output element is one chain over I whatever the chunk (common/step_gemm.h).
constexpr int64_t kStopCheckWork = int64_t(1) << 24;
// With `half` (an inference with 16-bit weights) W_ih^T is its panels instead.
// `in_place` (a single step of few rows: in_place_step) reads W_ih in place.
template <typename T>
void project_inputs(T* out, int64_t ldo, T* packed, const T* x, const T* w_ih, int64_t rows,
                    int64_t I, int64_t blocks, int64_t H, bool accumulate = false,
                    const HalfLayerWeights* half = nullptr, InPlace in_place = InPlace::no) {
  const int64_t nr = step_gemm_kernels<T>().panel_width;
  const int64_t row_work = std::max<int64_t>(1, blocks * H * I);
  const int64_t chunk_rows = std::max<int64_t>(64, kStopCheckWork / row_work / 64 * 64);
  run_team(gemm_team_size(rows * blocks * H * I), [&](int member, int members) {
    const PanelShare share = panel_share(H, nr, member, members);
    const StepWeights<T> w_ih_t =
        step_weights(half, half ? half->w_ih : nullptr, packed, w_ih, I, blocks, H, share, in_place,
                     half ? half->w_ih_amx : nullptr);
    for (int64_t r0 = 0; r0 < rows && !stop_requested(); r0 += chunk_rows)
      step_gemm(w_ih_t, 0, blocks, share, std::min(chunk_rows, rows - r0), x + r0 * I, I,
                out + r0 * ldo, ldo, accumulate);
  });
}

// What a member of a gate cell's forward time loop packs, for its panels `packs` (the hidden
// units [packs.begin, packs.begin + packs.width) of every gate block): its panels of W_hh^T
// (w_hh [blocks*H, R]) and, in inference, of W_ih^T (w_ih [blocks*H, I]), with which the loop
// projects the inputs chunk by chunk. With `half` (inference) nothing: the layer packed them.
// A single step of few rows reads them in place as `in_place` says (in_place_weights).
template <typename T>
struct GateLoopWeights {
  StepWeights<T> w_hh_t, w_ih_t;
};
template <typename T>
GateLoopWeights<T> pack_gate_loop_weights(const PanelShare& packs, int64_t blocks, int64_t H,
                                          T* packed_hh, const T* w_hh, int64_t R, T* packed_ih,
                                          const T* w_ih, int64_t I, bool training,
                                          const HalfLayerWeights* half, InPlaceWeights in_place) {
  GateLoopWeights<T> m;
  m.w_hh_t = step_weights(half, half ? half->w_hh : nullptr, packed_hh, w_hh, R, blocks, H, packs,
                          in_place.hh, half ? half->w_hh_amx : nullptr);
  if (!training)
    m.w_ih_t = step_weights(half, half ? half->w_ih : nullptr, packed_ih, w_ih, I, blocks, H, packs,
                            in_place.ih, half ? half->w_ih_amx : nullptr);
  return m;
}

// How a time loop's team shares each step.
// - By hidden units, in general: each member multiplies every running row by its panels of the
//   weights and runs the fused pass on those units; a barrier per step publishes h_t to all.
// - By batch rows, when every row runs every step (no lengths, no projection) and each member
//   gets at least a full tile of rows: each member runs its own rows through all the panels. A
//   row's state never reads another row's, so the steps need no barrier and no member waits for
//   another's h; the price is that each member reads all of W_hh every step instead of its share.
// Either way each member packs its own panels first (`packs`); by rows, the members then wait
// once for each other, so that all the panels are packed.
struct StepSplit {
  bool by_rows = false;
  PanelShare packs;  // the panels this member packs
  PanelShare units;  // the hidden units its step GEMMs and fused pass cover
  int64_t row0 = 0;  // by rows: its rows [row0, row0 + rows)
  int64_t rows = 0;
  // Its rows of a step whose first n rows run: [first_row(), first_row() + row_count(n)).
  int64_t first_row() const { return by_rows ? row0 : 0; }
  int64_t row_count(int64_t n) const { return by_rows ? rows : n; }
  // After packing. By rows, a barrier: every member's panels are then there for all (by units a
  // member multiplies only with the panels it packed).
  void wait_for_all_panels() const {
    if (by_rows) team_barrier();
  }
  // Within a step. By units, a barrier: what each member wrote of the step (h_t, r*h, gate
  // gradients) is then there for all. By rows nothing: a member reads only its own rows.
  void share_step_results() const {
    if (!by_rows) team_barrier();
  }
};
// When a step splits by rows: each member needs a full tile of rows (csrc/step_gemm.inc), and
// W_hh at most kMaxRowSplitWeightBytes, since each member reads all of it every step and each
// panel is reused by fewer row tiles than when all rows share it (measured, LSTM, float, 2
// threads: fwd+bwd (16, 50, 128) 0.88x the time by units, (32, 100, 256) with W_hh of 1 MiB
// 0.96x; with the 4 MiB of (64, 50, 512) the forward took 1.03x).
constexpr int64_t kMinRowsPerMember = 8;
constexpr int64_t kMaxRowSplitWeightBytes = int64_t(1) << 20;
// weight_bytes: the size of W_hh (of every gate); uniform_batch: every row runs every step and
// the cell has no projection; w_hh_in_place: how a single step reads W_hh (in_place_weights).
// A single step that reads it as out^T = W h^T has its rows as the columns of the tiles' panels:
// it splits by rows only if every member's rows fill whole panels. Otherwise the members' tiles
// would multiply padding (by rows, a float step of 32 rows gives each of 2 members half a
// panel), and by units they do not: on 2 threads (Xeon, AVX-512, float, best of 150) an LSTM
// step of 16-32 rows at H = 256 took 134-163 us instead of 194-213, a GRU's 100-119 instead of
// 138-150, an RNN's at H = 512 121-144 instead of 191-212.
inline StepSplit step_split(int member, int members, int64_t B, int64_t H, int64_t nr,
                            int64_t weight_bytes, bool uniform_batch,
                            InPlace w_hh_in_place = InPlace::no) {
  StepSplit s;
  const bool whole_panels = w_hh_in_place != InPlace::transposed || B % (members * nr) == 0;
  s.by_rows = uniform_batch && members > 1 && B / members >= kMinRowsPerMember &&
              weight_bytes <= kMaxRowSplitWeightBytes && whole_panels;
  s.packs = panel_share(H, nr, member, members);
  s.units = s.by_rows ? panel_share(H, nr, 0, 1) : s.packs;
  s.row0 = share_begin(B, member, members);
  s.rows = share_begin(B, member + 1, members) - s.row0;
  return s;
}

// Inference: this member's columns of the input projection of a chunk of steps' rows,
// proj = x W_ih^T (w_ih_t: the member's packed panels, `blocks` gate blocks). By rows each member
// then reads every column of its own rows: barriers before (every member done with the last
// chunk) and after (every column projected).
template <typename T>
void project_chunk(const StepSplit& split, const StepWeights<T>& w_ih_t, int64_t blocks,
                   int64_t rows, const T* x, int64_t I, T* proj, int64_t G) {
  if (split.by_rows) team_barrier();
  step_gemm(w_ih_t, 0, blocks, split.packs, rows, x, I, proj, G, false);
  if (split.by_rows) team_barrier();
}

// The steps whose input projection an inference forward computes at once: enough rows for an
// efficient GEMM, without keeping the projection of a whole long sequence.
inline int64_t projection_chunk_steps(int64_t steps, int64_t B) {
  return std::max<int64_t>(
      1, std::min<int64_t>(steps, std::max<int64_t>(8, 256 / std::max<int64_t>(B, 1))));
}

}  // namespace fusedrnn

namespace fusedrnn {

// Rows of the batch still running at step t. With variable lengths the batch is sorted by length,
// longest first (the stack driver does it), so they are a prefix: batch_sizes[t] of them
// (PyTorch's PackedSequence.batch_sizes). Null batch_sizes: every row, every step.
inline int64_t active_rows(const int64_t* batch_sizes, int64_t t, int64_t B) {
  return batch_sizes ? batch_sizes[t] : B;
}

// a[rows begin..end) = 0 for a [rows, width].
template <typename T>
void zero_rows(T* a, int64_t begin, int64_t end, int64_t width) {
  if (end > begin) std::fill(a + begin * width, a + end * width, T(0));
}

// dst[b] = seq[last(b)][b]: each row's state after its own last step; seq [T,B,F], dst [B,F].
template <typename T>
void gather_last_steps(T* dst, const T* seq, const int64_t* batch_sizes, int64_t steps, int64_t B,
                       int64_t F) {
  int64_t t = steps - 1;
  for (int64_t b = 0; b < B; ++b) {  // rows sorted longest first: last steps only shrink
    if (batch_sizes)
      while (t > 0 && batch_sizes[t] <= b) --t;
    std::memcpy(dst + b * F, seq + (t * B + b) * F, static_cast<size_t>(F) * sizeof(T));
  }
}

}  // namespace fusedrnn
