"""Hugging Face interchange: the weight and config mapping to / from `LlamaForCausalLM`, the tokenizer files of
an export, and save_pretrained / load_params on top of safetensors_files.py (the file format). Nothing here trains,
samples or knows the workdir layout.

Library API:
    save_pretrained(params, model_cfg, out_dir, tokenizer=None, max_shard_bytes=2e9, ...) -> out_dir
        writes config.json, generation_config.json, model.safetensors (or model-0000i-of-0000N
        shards + model.safetensors.index.json) and, given a tokenizer, tokenizer.json +
        tokenizer_config.json + special_tokens_map.json. Needs only numpy + safetensors.
    load_params(hf_dir) -> (params, model_cfg)   reads a Llama safetensors checkpoint (F32/F16/BF16)
    to_hf_tensors / from_hf_tensors               the weight mapping on plain dicts of numpy arrays
    hf_config / model_config_from_hf              the config mapping (raises InputError on unsupported)
The workdir commands (export, import) are in jaxgrow.cli.commands; decoding is jaxgrow.serve.decode.

Weight mapping (ours: layout.py, x @ W with inputs first; HF: nn.Linear weights are [out, in]):

    embed/embedding [V,D]            model.embed_tokens.weight [V,D]                 (same)
    layers/attn_norm/scale [L,D]     model.layers.{l}.input_layernorm.weight [D]
    layers/attn/q_proj [L,D,H,d]     model.layers.{l}.self_attn.q_proj.weight [H*d,D] = q[l].reshape(D,H*d).T
    layers/attn/k_proj [L,D,K,d]     ...self_attn.k_proj.weight [K*d,D]              (likewise)
    layers/attn/v_proj [L,D,K,d]     ...self_attn.v_proj.weight [K*d,D]              (likewise)
    layers/attn/o_proj [L,H,d,D]     ...self_attn.o_proj.weight [D,H*d]              = o[l].reshape(H*d,D).T
    layers/mlp_norm/scale [L,D]      ...post_attention_layernorm.weight [D]
    layers/mlp/gate_proj [L,D,F]     ...mlp.gate_proj.weight [F,D]                   = gate[l].T
    layers/mlp/up_proj [L,D,F]       ...mlp.up_proj.weight [F,D]                     = up[l].T
    layers/mlp/down_proj [L,F,D]     ...mlp.down_proj.weight [D,F]                   = down[l].T
    final_norm/scale [D]             model.norm.weight [D]
    lm_head/kernel [D,V]             lm_head.weight [V,D] = kernel.T   (absent when tie_word_embeddings)

Both sides use the rotate-half RoPE on heads laid out [head, head_dim] (so no q/k permutation),
RMSNorm x * rsqrt(mean(x^2) + eps) * weight, SwiGLU and GQA with query head h reading KV head
h // (H/K). The mapping is exact (transposes and reshapes only), so import -> export -> import is
the identity. Config: intermediate_size = ffn_size, num_key_value_heads = num_kv_heads,
head_dim, rope_parameters.rope_theta (and the legacy rope_theta), rms_norm_eps = norm_eps,
tie_word_embeddings, no biases, hidden_act silu, no rope scaling; eos/bos = the run's data.eos_token /
data.bos_token (default: the EOS the data pipeline picks, no BOS) in config.json, generation_config.json
and the tokenizer files, so `generate` stops where the model learned to end a document.

Transformers >= 5 requires hidden_size % num_attention_heads == 0 in LlamaConfig even though
head_dim is explicit; such exports are still written (we and older transformers read them), with a
warning.

Import refuses, with a one-line InputError naming the file: other architectures, biases, hidden_act
other than silu, rope scaling / non-default rope types / partial rotary, quantized or non-safetensors
checkpoints, and missing, extra or misshapen tensors. BF16/F16 weights are upcast to float32 (exact).
An imported workdir is a one-member run whose member is named "model".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

import ml_dtypes
import numpy as np
from tokenizers import Tokenizer

from jaxgrow import config as config_lib
from jaxgrow.config import rope_context
from jaxgrow.data import tokenizers as tokenizers_lib
from jaxgrow.interop import safetensors_files
from jaxgrow.interop.safetensors_files import (  # noqa: F401  (re-exported: hf.read_safetensors, hf.INDEX_FILE, ...)
    DEFAULT_MAX_SHARD_BYTES, INDEX_FILE, SINGLE_FILE, HFError, read_safetensors, write_safetensors)
from jaxgrow.model import layout


log = logging.getLogger("jaxgrow")


DEFAULT_MAX_POSITIONS = 2048
IMPORTED_MEMBER = "model"  # an imported run is a one-member family (config.members empty)


# ----------------------------------------------------------------------------------------------
# Weight mapping (driven by layout.param_specs)


@dataclasses.dataclass(frozen=True)
class _Mapping:
    name: str      # HF tensor name; "{l}" is the layer index for stacked params
    n_in: int      # linear weights: how many leading (per-layer) axes are inputs; 0 = copied as is


MAPPINGS: dict[tuple[str, ...], _Mapping] = {
    ("embed", "embedding"): _Mapping("model.embed_tokens.weight", 0),
    ("layers", "attn_norm", "scale"): _Mapping("model.layers.{l}.input_layernorm.weight", 0),
    ("layers", "attn", "q_proj"): _Mapping("model.layers.{l}.self_attn.q_proj.weight", 1),
    ("layers", "attn", "k_proj"): _Mapping("model.layers.{l}.self_attn.k_proj.weight", 1),
    ("layers", "attn", "v_proj"): _Mapping("model.layers.{l}.self_attn.v_proj.weight", 1),
    ("layers", "attn", "o_proj"): _Mapping("model.layers.{l}.self_attn.o_proj.weight", 2),
    ("layers", "mlp_norm", "scale"): _Mapping("model.layers.{l}.post_attention_layernorm.weight", 0),
    ("layers", "mlp", "gate_proj"): _Mapping("model.layers.{l}.mlp.gate_proj.weight", 1),
    ("layers", "mlp", "up_proj"): _Mapping("model.layers.{l}.mlp.up_proj.weight", 1),
    ("layers", "mlp", "down_proj"): _Mapping("model.layers.{l}.mlp.down_proj.weight", 1),
    ("final_norm", "scale"): _Mapping("model.norm.weight", 0),
    ("lm_head", "kernel"): _Mapping("lm_head.weight", 1),
}

# Tensors some HF checkpoints carry that hold no parameters (recomputed buffers).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _mapping(spec: layout.ParamSpec) -> _Mapping:
    if spec.path not in MAPPINGS:
        raise NotImplementedError(f"hf: no Hugging Face name for parameter {spec.name}; add it to hf.MAPPINGS")
    return MAPPINGS[spec.path]


def _layer_shape(spec: layout.ParamSpec) -> tuple[int, ...]:
    return spec.shape[1:] if spec.stacked else spec.shape


def _hf_shape(spec: layout.ParamSpec) -> tuple[int, ...]:
    shape, n_in = _layer_shape(spec), _mapping(spec).n_in
    if n_in == 0:
        return shape
    return (math.prod(shape[n_in:]), math.prod(shape[:n_in]))


def _to_hf_matrix(x: np.ndarray, n_in: int) -> np.ndarray:
    if n_in == 0:
        return x
    return np.ascontiguousarray(x.reshape(math.prod(x.shape[:n_in]), -1).T)


def _from_hf_matrix(w: np.ndarray, spec: layout.ParamSpec) -> np.ndarray:
    n_in = _mapping(spec).n_in
    if n_in == 0:
        return w
    return np.ascontiguousarray(w.T).reshape(_layer_shape(spec))


def _hf_names(spec: layout.ParamSpec) -> list[str]:
    name = _mapping(spec).name
    return [name.format(l=i) for i in range(spec.shape[0])] if spec.stacked else [name]


def to_hf_tensors(params: dict, model_cfg: Any) -> dict[str, np.ndarray]:
    """Our params -> HF `LlamaForCausalLM` state dict (float32 numpy, HF names, HF order)."""
    out: dict[str, np.ndarray] = {}
    for spec, value in layout.iter_leaves(model_cfg, params):
        value = np.asarray(value, dtype=np.float32)
        if tuple(value.shape) != spec.shape:
            raise ValueError(f"hf: params {spec.name} has shape {value.shape}, the config says {spec.shape}")
        per_layer = list(value) if spec.stacked else [value]
        for name, x in zip(_hf_names(spec), per_layer):
            out[name] = _to_hf_matrix(x, _mapping(spec).n_in)
    return out


def from_hf_tensors(tensors: dict[str, np.ndarray], model_cfg: Any, source: str = "checkpoint") -> dict:
    """HF state dict -> our params (float32 numpy). Raises HFError on missing, extra or misshapen tensors."""
    tied_head = MAPPINGS[("lm_head", "kernel")].name if model_cfg.tie_embeddings else None
    biases = sorted(n for n in tensors if n.endswith(".bias"))
    if biases:
        raise HFError(f"{source}: has bias tensors ({biases[0]}, ...); only bias-free Llama models are supported")
    used: set[str] = set()

    def leaf(spec: layout.ParamSpec) -> np.ndarray:
        layers = []
        for name in _hf_names(spec):
            if name not in tensors:
                raise HFError(f"{source}: tensor {name} is missing")
            w = tensors[name]
            if not np.issubdtype(np.asarray(w).dtype, np.floating):
                raise HFError(f"{source}: tensor {name} has dtype {np.asarray(w).dtype}; weights must be floating "
                              "point (F32, F16 or BF16)")
            if not np.isfinite(w).all():
                raise HFError(f"{source}: tensor {name} has non-finite values (NaN or inf); refusing to import it")
            if tuple(w.shape) != _hf_shape(spec):
                raise HFError(f"{source}: tensor {name} has shape {list(w.shape)}, config.json implies "
                              f"{list(_hf_shape(spec))}")
            used.add(name)
            layers.append(_from_hf_matrix(np.asarray(w, dtype=np.float32), spec))
        return np.stack(layers) if spec.stacked else layers[0]

    params = layout.build_tree(model_cfg, leaf)
    extra = sorted(n for n in tensors if n not in used and n != tied_head and not n.endswith(_IGNORED_SUFFIXES))
    if extra:
        raise HFError(f"{source}: unexpected tensors {extra[:3]}{' ...' if len(extra) > 3 else ''} "
                      "(not a plain LlamaForCausalLM checkpoint)")
    return params


# ----------------------------------------------------------------------------------------------
# Config mapping


EXPORT_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def hf_config(model_cfg: Any, eos_id: int | None = None, max_position_embeddings: int = DEFAULT_MAX_POSITIONS,
              dtype: str = "float32", bos_id: int | None = None) -> dict:
    """The config.json of an HF `LlamaForCausalLM` equivalent to our model config."""
    m = model_cfg
    theta = float(m.rope_theta)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(m.vocab_size),
        "hidden_size": int(m.hidden_size),
        "intermediate_size": int(m.ffn_size),
        "num_hidden_layers": int(m.num_layers),
        "num_attention_heads": int(m.num_heads),
        "num_key_value_heads": int(m.num_kv_heads),
        "head_dim": int(m.head_dim),
        "hidden_act": "silu",
        "max_position_embeddings": int(max_position_embeddings),
        "initializer_range": float(m.init_std),
        "rms_norm_eps": float(m.norm_eps),
        "rope_theta": theta,  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},  # transformers >= 5
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": bool(m.tie_embeddings),
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": None,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def _rope_theta(hf: dict, source: str) -> float:
    """rope_theta from `rope_parameters` (transformers >= 5) or the legacy keys; refuses scaling."""
    scaling = hf.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise HFError(f"{source}: rope_scaling={json.dumps(scaling)} is not supported (plain RoPE only)")
    params = hf.get("rope_parameters") or {}
    nested = any(isinstance(v, dict) for v in params.values())  # per-layer-type RoPE
    if nested or params.get("rope_type", params.get("type", "default")) != "default":
        raise HFError(f"{source}: rope_parameters={json.dumps(params)} is not supported (plain RoPE only)")
    factor = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if factor not in (None, 1, 1.0):
        raise HFError(f"{source}: partial_rotary_factor={factor} is not supported (full-width RoPE only)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config_from_hf(hf: dict, source: str = "config.json") -> Any:
    """Our model config from an HF Llama config.json dict. Raises HFError naming `source`."""
    archs = hf.get("architectures") or []
    if hf.get("model_type") != "llama" or (archs and archs != ["LlamaForCausalLM"]):
        raise HFError(f"{source}: model_type={hf.get('model_type')!r}, architectures={archs}; "
                      "only LlamaForCausalLM is supported")
    refusals = {
        "hidden_act": (hf.get("hidden_act", "silu") not in ("silu", "swish"), "only silu (SwiGLU) is supported"),
        "attention_bias": (bool(hf.get("attention_bias", False)), "biases are not supported"),
        "mlp_bias": (bool(hf.get("mlp_bias", False)), "biases are not supported"),
        "quantization_config": ("quantization_config" in hf, "quantized checkpoints are not supported"),
    }
    for key, (bad, why) in refusals.items():
        if bad:
            raise HFError(f"{source}: {key}={json.dumps(hf.get(key))}: {why}")
    try:
        heads = int(hf["num_attention_heads"])
        m = config_lib.model_config(
            vocab_size=int(hf["vocab_size"]), hidden_size=int(hf["hidden_size"]),
            ffn_size=int(hf["intermediate_size"]), num_layers=int(hf["num_hidden_layers"]), num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)), rope_theta=_rope_theta(hf, source),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), init_std=float(hf.get("initializer_range", 0.02)),
            dtype="float32")
    except KeyError as e:
        raise HFError(f"{source}: missing key {e.args[0]!r}") from None
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise HFError(f"{source}: bad value ({e})") from None
    try:
        config_lib.validate_model(m)
    except config_lib.ConfigError as e:
        raise HFError(f"{source}: unsupported model ({e})") from None
    return m


# ----------------------------------------------------------------------------------------------
# Export / import (library)


def _as_tokenizer(tokenizer: Any):
    """A `tokenizers.Tokenizer`, or a path to a tokenizer.json, or None."""
    if tokenizer is None or not isinstance(tokenizer, (str, Path)):
        return tokenizer
    return Tokenizer.from_file(str(tokenizer))


def special_tokens(tok: Any, eos_token: str | None = None, bos_token: str | None = None) -> dict:
    """{"eos_token", "eos_token_id", "bos_token", "bos_token_id"} of an export (None where absent).
    eos_token default: the data pipeline's rule (the first of data.tokenizers.EOS_CANDIDATES the
    tokenizer has); bos_token default: none, as data.bos_token. Raises HFError for a token the
    tokenizer does not have."""
    out: dict[str, Any] = {"eos_token": None, "eos_token_id": None, "bos_token": None, "bos_token_id": None}
    if tok is None:
        return out
    for kind, token in (("eos", eos_token or tokenizers_lib.default_eos_token(tok)), ("bos", bos_token)):
        if token:
            token_id = tok.token_to_id(token)
            if token_id is None:
                raise HFError(f"{kind}_token={token!r} (data.{kind}_token) is not a token of the exported tokenizer; "
                              "give one it has")
            out[f"{kind}_token"], out[f"{kind}_token_id"] = token, int(token_id)
    return out


def _with_bos(tok: Any, bos: str, bos_id: int):
    """A copy of `tok` whose encode prepends BOS, as the run's documents began: transformers' generic
    tokenizer takes that from tokenizer.json's post-processor (it ignores add_bos_token)."""
    from tokenizers import processors  # noqa: PLC0415

    tok = Tokenizer.from_str(tok.to_str())
    template = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    byte_level = isinstance(tok.post_processor, processors.ByteLevel)  # keep its offset handling
    tok.post_processor = processors.Sequence([tok.post_processor, template]) if byte_level else template
    return tok


def write_tokenizer(tokenizer: Any, out_dir: Path, model_max_length: int, eos_token: str | None = None,
                    bos_token: str | None = None) -> None:
    """tokenizer.json + tokenizer_config.json (PreTrainedTokenizerFast) + special_tokens_map.json,
    with the EOS/BOS of `special_tokens` (add_bos_token exactly when there is a BOS)."""
    tok = _as_tokenizer(tokenizer)
    sp = special_tokens(tok, eos_token, bos_token)
    if sp["bos_token"]:
        tok = _with_bos(tok, sp["bos_token"], sp["bos_token_id"])
    tok.save(str(out_dir / "tokenizer.json"))
    special = {k: sp[k] for k in ("bos_token", "eos_token") if sp[k]}
    added = {str(i): {"content": t.content, "lstrip": t.lstrip, "rstrip": t.rstrip, "normalized": t.normalized,
                      "single_word": t.single_word, "special": t.special}
             for i, t in sorted(tok.get_added_tokens_decoder().items())}
    safetensors_files.write_json(out_dir / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": int(model_max_length),
        "clean_up_tokenization_spaces": False, "add_bos_token": bool(sp["bos_token"]), "add_eos_token": False,
        "added_tokens_decoder": added, **special})
    safetensors_files.write_json(out_dir / "special_tokens_map.json", special)


def check_export_args(max_position_embeddings: int | None, dtype: str) -> None:
    if dtype not in EXPORT_DTYPES:
        raise HFError(f"--export_dtype={dtype} is not supported; choose one of {', '.join(EXPORT_DTYPES)}")
    if max_position_embeddings is not None and int(max_position_embeddings) < 1:
        raise HFError(f"--max_position_embeddings={max_position_embeddings} must be >= 1 (0 = the run's data.seq_len)")


def save_pretrained(params: dict, model_cfg: Any, out_dir: str | Path, tokenizer: Any = None,
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                    max_position_embeddings: int | None = None, dtype: str = "float32",
                    write_weights: Callable[[Path], Any] | None = None, *, eos_token: str | None = None,
                    bos_token: str | None = None) -> Path:
    """Writes `out_dir` as an HF LlamaForCausalLM checkpoint loadable by `from_pretrained(out_dir)`.

    params: our layout (jax or numpy arrays; gathered to host as float32). tokenizer: a
    `tokenizers.Tokenizer` or a tokenizer.json path. eos_token / bos_token: the run's
    data.eos_token / data.bos_token; their ids (see `special_tokens` for the defaults) go into
    config.json and generation_config.json, the strings into the tokenizer files.
    max_shard_bytes: weights larger than this are split into shards plus an index file.
    max_position_embeddings: written to config.json and as the tokenizer's model_max_length
    (the export command passes the trained data.seq_len; default here: the model's RoPE-usable
    context, config.rope_context).
    dtype: "float32" (exact) or "bfloat16" (weights rounded to nearest; half the bytes).
    write_weights: writes the safetensors files into out_dir instead of converting `params` here
    on the host (jaxgrow.interop.export.save_pretrained streams sharded params tensor by tensor).
    """
    check_export_args(max_position_embeddings, dtype)
    if max_position_embeddings is None:
        max_position_embeddings = rope_context(model_cfg)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise HFError(f"--out={out_dir} exists and is not a directory")
    if model_cfg.hidden_size % model_cfg.num_heads:
        log.warning("hf: hidden_size=%d is not divisible by num_heads=%d; transformers >= 5 refuses such a "
                    "LlamaConfig", model_cfg.hidden_size, model_cfg.num_heads)
    tok = _as_tokenizer(tokenizer)
    sp = special_tokens(tok, eos_token, bos_token)  # before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    if write_weights is not None:
        write_weights(out_dir)
    else:
        tensors = {k: v.astype(EXPORT_DTYPES[dtype]) for k, v in to_hf_tensors(params, model_cfg).items()}
        write_safetensors(tensors, out_dir, max_shard_bytes)
    safetensors_files.write_json(out_dir / "config.json", hf_config(model_cfg, sp["eos_token_id"], max_position_embeddings, dtype,
                                                   bos_id=sp["bos_token_id"]))
    safetensors_files.write_json(out_dir / "generation_config.json", {"bos_token_id": sp["bos_token_id"], "eos_token_id": sp["eos_token_id"]})
    if tok is not None:
        write_tokenizer(tok, out_dir, max_position_embeddings, sp["eos_token"], sp["bos_token"])
    return out_dir


def load_params(hf_dir: str | Path) -> tuple[dict, Any]:
    """(params as float32 numpy in our layout, model config) of an HF Llama safetensors checkpoint."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise HFError(f"--hf={hf_dir} is not a directory")
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise HFError(f"--hf={hf_dir} has no config.json (not a Hugging Face checkpoint directory)")
    model_cfg = model_config_from_hf(safetensors_files.read_json(config_path), str(config_path))
    tensors: dict[str, np.ndarray] = {}
    for path in safetensors_files.weight_files(hf_dir):
        tensors.update(read_safetensors(path))
    return from_hf_tensors(tensors, model_cfg, f"--hf={hf_dir}"), model_cfg
