"""Truncated backpropagation through time, TBPTT(k1, k2), by its definition.

For every chunk of k1 steps: take the span from k2 - k1 steps before the chunk to its end, re-run
the stack over that span alone from the states the full forward had when entering it (so they are
constants), backpropagate the chunk's own output gradients (none on the look-back steps) and the
final-state gradients of the rows whose last step lies in the chunk, and add up what comes out.
Slow (a forward per chunk) and plain, as a reference should be.
"""

from __future__ import annotations

import numpy as np

from ._common import split_workspace


def truncated_stack_backward(
    stack_forward,
    stack_backward,
    mode,
    x,
    h0,
    c0,
    params,
    num_layers,
    y,
    saved,
    dy,
    dh_n,
    dc_n,
    lengths,
    dropout_masks,
    options,
    grads,
    k2,
    k1,
):
    """TBPTT(k1, k2) of a one-direction stack; arguments as `stack.stack_backward` (after its
    checks: ``h0``/``c0`` arrays, ``dy``/``dh_n``/``dc_n`` arrays of zeros where absent).

    Returns ``(dx, dh0, dc0, grads)``.
    """
    T, B = x.shape[:2]
    lengths_all = np.full(B, T) if lengths is None else np.asarray(lengths)
    outputs = [*saved.outputs, y]  # every layer's output, before dropout
    H = c0.shape[2] if c0 is not None else h0.shape[2]
    dx = np.zeros_like(x)
    dh0 = np.zeros_like(h0)
    dc0 = None if c0 is None else np.zeros_like(c0)
    for chunk_begin in range(0, T, k1):
        end = min(chunk_begin + k1, T)
        begin = max(0, chunk_begin - (k2 - k1))
        rows = np.flatnonzero(lengths_all > begin)  # the rows with steps in the span
        # The states entering the span: the forward's own, at step begin - 1.
        if begin == 0:
            h_in, c_in = h0[:, rows], (None if c0 is None else c0[:, rows])
        else:
            h_in = np.stack([outputs[k][begin - 1, rows] for k in range(num_layers)])
            c_in = (
                None
                if c0 is None
                else np.stack(
                    [
                        split_workspace(saved.workspaces[k][0], "lstm", T, B, H, x.dtype)[1][
                            begin - 1, rows
                        ]
                        for k in range(num_layers)
                    ]
                )
            )
        hx = h_in if c_in is None else (h_in, c_in)
        span_lengths = np.minimum(lengths_all[rows], end) - begin
        masks = None if dropout_masks is None else [m[begin:end][:, rows] for m in dropout_masks]
        x_span = x[begin:end][:, rows]
        span_options = dict(options)
        if options.get("noise") is not None:  # the span's steps and rows: the forward's masks
            span_options["noise"] = options["noise"].for_span(begin, rows)
        y_span, _, _, saved_span = stack_forward(
            mode,
            x_span,
            hx,
            params,
            num_layers,
            lengths=span_lengths,
            dropout_masks=masks,
            **span_options,
        )
        d_out = dy[begin:end][:, rows].copy()
        d_out[: chunk_begin - begin] = 0  # the look-back steps: no output gradient of this chunk
        last = lengths_all[rows] - 1
        ends_in_chunk = ((last >= chunk_begin) & (last < end))[None, :, None]
        dx_span, dh0_span, dc0_span, grads = stack_backward(
            mode,
            x_span,
            hx,
            params,
            num_layers,
            y_span,
            saved_span,
            d_out,
            dh_n[:, rows] * ends_in_chunk,
            None if dc_n is None else dc_n[:, rows] * ends_in_chunk,
            lengths=span_lengths,
            dropout_masks=masks,
            grads=grads,
            **span_options,
        )
        dx[begin:end, rows] += dx_span
        if begin == 0:  # only spans that start at step 0 reach the initial states
            dh0[:, rows] += dh0_span
            if dc0 is not None:
                dc0[:, rows] += dc0_span
    return dx, dh0, dc0, grads
