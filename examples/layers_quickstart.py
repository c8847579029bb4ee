"""fusedrnn.LSTM as a drop-in for torch.nn.LSTM: weights in, forward, backward, gradients.

Run: python examples/layers_quickstart.py  (PyTorch is optional: without it the LSTM keeps its
own initialisation and the comparison is skipped).
"""

import numpy as np

import fusedrnn

T, B, I, H = 7, 3, 10, 16
rng = np.random.default_rng(0)
x = rng.standard_normal((B, T, I)).astype(np.float32)
lengths = [7, 2, 5]  # variable-length items, any order

lstm = fusedrnn.LSTM(I, H, num_layers=2, batch_first=True, bidirectional=True, seed=0)

try:
    import torch
except ImportError:
    torch = None
if torch is not None:  # move the weights of a torch model over: same names, shapes, gate order
    torch_lstm = torch.nn.LSTM(I, H, num_layers=2, batch_first=True, bidirectional=True)
    lstm.load_state_dict({k: v.detach().numpy() for k, v in torch_lstm.state_dict().items()})

output, (h_n, c_n) = lstm(x, lengths=lengths)  # output (B, T, 2H); h_n, c_n (4, B, H)
print("output", output.shape, "h_n", h_n.shape, "c_n", c_n.shape)

# backward of the loss sum(output): gradients of x and the initial states, parameters into grads
dx, (dh0, dc0) = lstm.backward(np.ones_like(output))
print(
    "dx",
    dx.shape,
    "dh0",
    dh0.shape,
    "|grad weight_ih_l0| =",
    float(np.linalg.norm(lstm.grads["weight_ih_l0"])),
)

if torch is not None:
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    x_t = torch.tensor(x, requires_grad=True)
    packed = pack_padded_sequence(
        x_t, torch.tensor(lengths), batch_first=True, enforce_sorted=False
    )
    out_t, _ = torch_lstm(packed)
    out_t, _ = pad_packed_sequence(out_t, batch_first=True, total_length=T)
    out_t.sum().backward()
    print("max |output - torch| =", float(np.abs(output - out_t.detach().numpy()).max()))
    print("max |dx - torch|     =", float(np.abs(dx - x_t.grad.numpy()).max()))

# a plain SGD step on the live parameters, then clear the gradients
for name, param in lstm.named_parameters():
    param -= 0.1 * lstm.grads[name]
lstm.zero_grad()

# inference: eval() keeps nothing for backward and turns dropout off
lstm.eval()
output, _ = lstm(x, lengths=lengths)
