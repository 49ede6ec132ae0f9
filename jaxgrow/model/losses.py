"""Losses over the decoder's logits, shared by training and evaluation: next-token cross-entropy, KL
between two models' next-token distributions, the held-out eval step, and document segment ids."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgrow.model import decoder


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy in nats. logits [B,T,V] float32, targets [B,T] int."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets))


def kl_divergence(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
    """Mean over tokens of KL(p || q) in nats, both given as logits [..., V]."""
    logp = jax.nn.log_softmax(p_logits.astype(jnp.float32), axis=-1)
    logq = jax.nn.log_softmax(q_logits.astype(jnp.float32), axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1))


def make_eval_step(model_cfg: Any, document_eos: int | None = None) -> Callable:
    """(params, batch[B, T+1]) -> summed token NLL and token count, for exact averaging."""

    def eval_fn(params, batch):
        segments = None if document_eos is None else segment_ids(batch[:, :-1], document_eos)
        out = decoder.logits(params, model_cfg, batch[:, :-1], segments)
        nll = optax.softmax_cross_entropy_with_integer_labels(out, batch[:, 1:])
        return jnp.sum(nll), jnp.float32(nll.size)

    return eval_fn


def evaluate_loss(eval_step: Callable, params: Any, batches: list[jax.Array]) -> float:
    """Mean token NLL over the fixed held-out batches."""
    total, count = 0.0, 0.0
    for b in batches:
        s, n = eval_step(params, b)
        total, count = total + s, count + n
    return float(total / count)


def segment_ids(tokens, eos_id: int):
    """Document index of every position of [B, T] tokens: it increases after each EOS, so an EOS
    belongs to the document it ends (works on numpy and jax arrays)."""
    xp = np if isinstance(tokens, np.ndarray) else jax.numpy
    is_eos = (tokens == eos_id).astype(xp.int32)
    return xp.cumsum(is_eos, axis=-1) - is_eos
