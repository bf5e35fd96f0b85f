"""The semantics (docs/semantics.rst) written a second time, plainly, in float64 NumPy: the oracle the XLA reference is checked against.

Independent of ejkernel on purpose (no mask, merge or validation helpers): one loop over (batch, query
head), explicit index arithmetic for GQA, causal and window, and a row-by-row softmax. Inputs are taken
as they are (already rounded to their dtype) and promoted to float64; nothing is rounded afterwards.
"""

from __future__ import annotations

import numpy as np

__all__ = ["attention_reference", "allowed_keys"]


def allowed_keys(q_len: int, kv_len: int, causal: bool, window: int | tuple[int, int] | None) -> np.ndarray:
    """Boolean ``[q_len, kv_len]``: which keys each query may see under causal/window, bottom-right aligned."""
    if isinstance(window, int):
        window = (window, window)
    offset = kv_len - q_len
    ok = np.ones((q_len, kv_len), dtype=bool)
    for i in range(q_len):
        diag = i + offset  # the key position aligned with query i
        for j in range(kv_len):
            if causal and j > diag:
                ok[i, j] = False
            if window is not None and not (diag - window[0] <= j <= diag + window[1]):
                ok[i, j] = False
    return ok


def _operand_slice(x: np.ndarray, b: int, h: int, num_q_heads: int, group: int) -> np.ndarray:
    """The ``[Sq, Skv]`` slice of a ``[B|1, Hq|Hkv|1, Sq, Skv]`` bias or mask seen by query head ``h``."""
    batch_index = 0 if x.shape[0] == 1 else b
    heads = x.shape[1]
    if heads == 1:
        head_index = 0
    elif heads == num_q_heads:
        head_index = h
    else:  # one per kv head, shared by its group of query heads
        head_index = h // group
    return x[batch_index, head_index]


def attention_reference(
    query,
    key,
    value,
    *,
    attention_mask=None,
    bias=None,
    softmax_aux=None,
    softmax_scale: float | None = None,
    logits_soft_cap: float | None = None,
    causal: bool = False,
    sliding_window: int | tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(output [B, Sq, Hq, Dv], weights [B, Hq, Sq, Skv])`` in float64, without dropout."""
    q = np.asarray(query, dtype=np.float64)
    k = np.asarray(key, dtype=np.float64)
    v = np.asarray(value, dtype=np.float64)
    batch, q_len, num_q_heads, head_dim = q.shape
    _, kv_len, num_kv_heads, _ = k.shape
    group = num_q_heads // num_kv_heads
    scale = head_dim**-0.5 if softmax_scale is None else float(softmax_scale)
    structural = allowed_keys(q_len, kv_len, causal, sliding_window)
    bias = None if bias is None else np.asarray(bias, dtype=np.float64)
    mask = None if attention_mask is None else np.asarray(attention_mask, dtype=bool)
    sinks = None
    if softmax_aux is not None:
        sinks = np.asarray(softmax_aux, dtype=np.float64)
        if sinks.ndim == 1:
            sinks = np.stack([sinks] * num_q_heads)

    out = np.zeros((batch, q_len, num_q_heads, v.shape[-1]))
    weights = np.zeros((batch, num_q_heads, q_len, kv_len))
    for b in range(batch):
        for h in range(num_q_heads):
            kv_head = h // group
            logits = (q[b, :, h, :] @ k[b, :, kv_head, :].T) * scale
            if logits_soft_cap is not None:
                logits = logits_soft_cap * np.tanh(logits / logits_soft_cap)
            if bias is not None:
                logits = logits + _operand_slice(bias, b, h, num_q_heads, group)
            ok = structural.copy()
            if mask is not None:
                ok &= _operand_slice(mask, b, h, num_q_heads, group)
            head_sinks = np.zeros(0) if sinks is None else sinks[h]
            for i in range(q_len):
                if not ok[i].any():
                    continue  # no allowed key: zeros, whatever the sinks
                row_max = max(logits[i, ok[i]].max(), head_sinks.max(initial=-np.inf))
                e = np.where(ok[i], np.exp(np.where(ok[i], logits[i], row_max) - row_max), 0.0)
                denominator = e.sum() + np.exp(head_sinks - row_max).sum()
                weights[b, h, i] = e / denominator
            out[b, :, h, :] = weights[b, h] @ v[b, :, kv_head, :]
    return out, weights
