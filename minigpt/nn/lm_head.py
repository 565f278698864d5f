"""The language-model head, tied to the token embedding: logits = x @ wte^T (no bias).

Backward, with dout = dL/dlogits (wte is (V, C), x is (N, C), logits (N, V)):

    dx   = dout @ wte              # (N, C)
    dwte = dout^T @ x              # (V, C): added to the embedding's own gradient,
                                   # since both uses read the same matrix
"""


def forward(x, wte):
    """x: (..., C), wte: (V, C) -> logits (..., V)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # (N, C)
    logits = x2 @ wte.T  # (N, V); wte.T is a transposed view, BLAS reads it without a copy
    return logits.reshape(*lead, wte.shape[0]), (x2, wte, lead)


def backward(dout, cache):
    """Returns dx (..., C) and {"weight": dwte}."""
    x2, wte, _ = cache
    dout2 = dout.reshape(-1, wte.shape[0])  # (N, V)
    return backward_input(dout, cache), {"weight": dout2.T @ x2}


def backward_input(dout, cache):
    """dx alone, for a frozen head (LoRA fine-tuning): no (V, C) product for dwte."""
    _, wte, lead = cache
    return (dout.reshape(-1, wte.shape[0]) @ wte).reshape(*lead, wte.shape[1])
