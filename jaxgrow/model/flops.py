"""Analytic FLOPs per token — one convention, used for budgets, reports and MFU.

CONVENTION (MaxText's): a multiply-add counts as 2 FLOPs.
    forward per token  = 2 * N_matmul + 2 * T * H * d * L
                         (N_matmul: q, k, v, o, gate, up, down weights of every layer plus the LM head
                          matmul, which also runs when the embedding is tied; attention scores and
                          values are 4*T*H*d per layer, halved for the causal mask)
    training per token = 3 * forward  (backward = 2 * forward)
Norms, softmax, RoPE, the embedding lookup and the optimizer update are not counted.
"""

from __future__ import annotations

import math
from typing import Any

from jaxgrow.model import layout


CONVENTION = ("train = 3 x forward; forward/token = 2*N_matmul + 2*T*H*d*L "
              "(causal attention halved; N_matmul includes the LM head; norms/softmax/optimizer not counted)")


def matmul_params(m: Any) -> int:
    """Weights that take part in a matmul, from the layout: every parameter that reads an axis
    (role "in": q, k, v, o, gate, up, down, lm_head), plus the LM-head matmul of a tied embedding."""
    n = sum(math.prod(s.shape) for s in layout.param_specs(m) if "in" in s.roles)
    return n + (m.vocab_size * m.hidden_size if m.tie_embeddings else 0)


def attention_flops_per_token(m: Any, seq_len: int, causal: bool = True) -> float:
    full = 4.0 * seq_len * m.num_heads * m.head_dim * m.num_layers
    return full / 2 if causal else full


def forward_flops_per_token(m: Any, seq_len: int, causal: bool = True) -> float:
    return 2.0 * matmul_params(m) + attention_flops_per_token(m, seq_len, causal)


def train_flops_per_token(m: Any, seq_len: int, causal: bool = True) -> float:
    return 3.0 * forward_flops_per_token(m, seq_len, causal)
