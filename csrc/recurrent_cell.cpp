#include "recurrent_cell.h"

#include "gru.h"
#include "lstm.h"
#include "rnn.h"

namespace fusedrnn {

int64_t cell_workspace_size(CellKind cell, const CellShape& s) {
  switch (cell) {
    case CellKind::lstm:
      return lstm_workspace_size(s.steps, s.batch, s.hidden, s.proj);
    case CellKind::gru:
      return gru_workspace_size(s.steps, s.batch, s.hidden);
    default:  // the RNN reads its derivative off y; with options, it saves its pre-activations
      return s.options.enabled ? s.steps * s.batch * s.hidden : 0;
  }
}

int64_t cell_forward_scratch_size(CellKind cell, const CellShape& s, bool training) {
  switch (cell) {
    case CellKind::lstm:
      return lstm_forward_scratch_size(s, training);
    case CellKind::gru:
      return gru_forward_scratch_size(s, training);
    default:
      return rnn_forward_scratch_size(s);
  }
}

int64_t cell_backward_scratch_size(CellKind cell, const CellShape& s) {
  switch (cell) {
    case CellKind::lstm:
      return lstm_backward_scratch_size(s);
    case CellKind::gru:
      return gru_backward_scratch_size(s);
    default:
      return rnn_backward_scratch_size(s);
  }
}

template <typename T>
void cell_forward(CellKind cell, const CellForwardArgs<T>& a) {
  switch (cell) {
    case CellKind::lstm:
      return lstm_forward(a);
    case CellKind::gru:
      return gru_forward(a);
    case CellKind::rnn:
      return rnn_forward(a);
  }
}

template <typename T>
void cell_backward(CellKind cell, const CellBackwardArgs<T>& a) {
  switch (cell) {
    case CellKind::lstm:
      return lstm_backward(a);
    case CellKind::gru:
      return gru_backward(a);
    case CellKind::rnn:
      return rnn_backward(a);
  }
}

template void cell_forward<float>(CellKind, const CellForwardArgs<float>&);
template void cell_forward<double>(CellKind, const CellForwardArgs<double>&);
template void cell_backward<float>(CellKind, const CellBackwardArgs<float>&);
template void cell_backward<double>(CellKind, const CellBackwardArgs<double>&);

}  // namespace fusedrnn
