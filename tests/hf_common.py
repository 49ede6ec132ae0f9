"""Shared by the Hugging Face and sampling tests: small configs, random params, exact comparisons.
Needs only jax, numpy and safetensors (no torch)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxgrow import config as config_lib
from jaxgrow.model import decoder, layout


VOCAB = 320
TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. Call me Ishmael. Some years ago - never mind how long precisely - "
        "having little or no money in my purse, I thought I would sail about a little and see the watery "
        "part of the world. Whan that Aprille with his shoures soote. To be, or not to be: that is the question.")
ROUND_TRIP_TEXTS = ["To be, or not to be: that is the question.", "  leading spaces,\ttabs\nand newlines\n\n",
                    "naïve café — “quotes” ✓ 日本語 🙂", "<|endoftext|>between<|endoftext|>"]

# MHA untied; GQA tied (different theta/eps); MQA untied with H*d != D (head_dim independent of D).
CONFIGS = {
    "mha_untied": {"hidden_size": 64, "ffn_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 4,
                   "head_dim": 16},
    "gqa_tied": {"hidden_size": 48, "ffn_size": 96, "num_layers": 3, "num_heads": 6, "num_kv_heads": 2,
                 "head_dim": 8, "tie_embeddings": True, "rope_theta": 500000.0, "norm_eps": 1e-6},
    "mqa_untied": {"hidden_size": 64, "ffn_size": 160, "num_layers": 2, "num_heads": 4, "num_kv_heads": 1,
                   "head_dim": 32},
}



def our_config(name: str, **kw):
    return config_lib.model_config(vocab_size=VOCAB, init_std=0.2, **{**CONFIGS[name], **kw})


def random_params(model_cfg, seed: int = 0) -> dict:
    """Init at the config's (large) std, plus norm gains away from 1 so their mapping is tested."""
    params = decoder.init_params(model_cfg, jax.random.key(seed))
    keys = iter(jax.random.split(jax.random.key(seed + 1), 8))
    for path in (("layers", "attn_norm", "scale"), ("layers", "mlp_norm", "scale"), ("final_norm", "scale")):
        x = layout.get_path(params, path)
        layout.set_path(params, path, x + 0.3 * jax.random.normal(next(keys), x.shape))
    return jax.device_get(params)


def random_tokens(vocab: int, shape=(2, 24), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


_jit_logits = jax.jit(decoder.logits, static_argnums=1)


def our_logits(params, model_cfg, tokens: np.ndarray) -> np.ndarray:
    return np.asarray(_jit_logits(params, config_lib.frozen(model_cfg), jnp.asarray(tokens)))


def assert_params_equal(a: dict, b: dict) -> None:
    """Same tree structure, shapes, dtypes-as-float32 and bitwise-equal values."""
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, a), jax.tree.map(np.asarray, b))
