"""Streamed Hugging Face safetensors export: one tensor at a time from (sharded) arrays.

`write_streamed(params, model_cfg, out_dir, dtype=..., max_shard_bytes=...)` never gathers the whole
model: every HF tensor (one layer's slice of a stacked parameter, already transposed and cast on the
devices by a small jitted function) is copied to the host, written at its place in the shard file and
dropped. A safetensors header lists every tensor's offsets, and those follow from the layout's shapes
alone, so each shard's header is written first and the tensors stream in behind it. A host therefore
holds one tensor (at most one layer's largest matrix) plus the file buffer, whatever the model size.

With several processes every process takes part in the gathers (an array that spans hosts needs all of
them) and process 0 writes. Files appear under temporary names and are renamed when complete, so an
interrupted export leaves no file that looks finished.
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgrow.interop import hf
from jaxgrow.model import layout


SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DTYPES = {"float32": ("F32", jnp.float32, np.float32), "bfloat16": ("BF16", jnp.bfloat16, None)}


def _hf_mapping():

    return hf.MAPPINGS


def _plan(model_cfg: Any) -> list[tuple[str, layout.ParamSpec, int | None, tuple[int, ...]]]:
    """(HF name, param spec, layer index or None, HF shape) in HF order."""
    mappings = _hf_mapping()
    out = []
    for spec in layout.param_specs(model_cfg):
        m = mappings[spec.path]
        shape = spec.shape[1:] if spec.stacked else spec.shape
        hf_shape = shape if m.n_in == 0 else (math.prod(shape[m.n_in:]), math.prod(shape[:m.n_in]))
        for layer in range(spec.shape[0]) if spec.stacked else [None]:
            out.append((m.name.format(l=layer), spec, layer, tuple(hf_shape)))
    return out


@functools.lru_cache(maxsize=64)
def _extract_fn(n_in: int, stacked: bool, dtype: str):
    """jit: (param, layer) -> that layer's tensor as HF stores it ([out, in]), in `dtype`."""

    def extract(x, layer):
        if stacked:
            x = jax.lax.dynamic_index_in_dim(x, layer, axis=0, keepdims=False)
        if n_in:
            x = x.reshape(math.prod(x.shape[:n_in]), -1).T
        return x.astype(DTYPES[dtype][1])

    return jax.jit(extract)


def _to_host(x: jax.Array) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _shard_groups(entries: list, nbytes: list[int], max_shard_bytes: int) -> list[list[int]]:
    """Greedy split in order (as safetensors_files.split_shards); a tensor larger than the limit gets a shard of its own."""
    groups: list[list[int]] = [[]]
    size = 0
    for i in range(len(entries)):
        if groups[-1] and size + nbytes[i] > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += nbytes[i]
    return groups


def _header(names: list[str], shapes: list[tuple], st_dtype: str, nbytes: list[int]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, n in zip(names, shapes, nbytes):
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def write_streamed(params: dict, model_cfg: Any, out_dir: str | Path, dtype: str = "float32",
                   max_shard_bytes: int = 5 * 2**30) -> list[Path]:
    """Writes model.safetensors (or model-0000i-of-0000N.safetensors + index) into `out_dir`.

    params: our layout, jax arrays with any sharding (or numpy). dtype: float32 | bfloat16.
    Returns the weight files (on every process; only process 0 writes).
    """
    if dtype not in DTYPES:
        raise ValueError(f"export dtype={dtype!r} must be one of {list(DTYPES)}")
    st_dtype, _, _ = DTYPES[dtype]
    itemsize = 4 if dtype == "float32" else 2
    out_dir = Path(out_dir)
    writer = jax.process_index() == 0
    entries = _plan(model_cfg)
    nbytes = [math.prod(shape) * itemsize for _, _, _, shape in entries]
    groups = _shard_groups(entries, nbytes, max_shard_bytes)
    names = [SINGLE_FILE] if len(groups) == 1 else [f"model-{i:05d}-of-{len(groups):05d}.safetensors"
                                                     for i in range(1, len(groups) + 1)]
    mappings = _hf_mapping()
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
        for p in list(out_dir.glob("model*.safetensors")) + [out_dir / INDEX_FILE]:
            if p.is_file() and p.name not in names:
                p.unlink()  # stale weights of an earlier export with another shard count
    files = []
    for fname, group in zip(names, groups):
        path = out_dir / fname
        tmp = out_dir / (fname + ".tmp")
        f = open(tmp, "wb") if writer else None
        try:
            if f:
                f.write(_header([entries[i][0] for i in group], [entries[i][3] for i in group], st_dtype,
                                [nbytes[i] for i in group]))
            for i in group:
                _, spec, layer, shape = entries[i]
                value = layout.get_path(params, spec.path)
                fn = _extract_fn(mappings[spec.path].n_in, spec.stacked, dtype)
                host = _to_host(fn(value, 0 if layer is None else layer))
                if host.shape != shape:
                    raise ValueError(f"export: {spec.name} gives an HF tensor of shape {host.shape}, expected {shape}")
                if f:
                    f.write(np.ascontiguousarray(host).reshape(-1).view(np.uint8).data)  # no bytes copy
                del host
        except BaseException:
            if f:
                f.close()
                tmp.unlink(missing_ok=True)
            raise
        if f:
            f.close()
            os.replace(tmp, path)
        files.append(path)
    if writer and len(groups) > 1:
        index = {"metadata": {"total_size": int(sum(nbytes)),
                              "total_parameters": int(sum(math.prod(e[3]) for e in entries))},
                 "weight_map": {entries[i][0]: fname for fname, group in zip(names, groups) for i in group}}
        tmp = out_dir / (INDEX_FILE + ".tmp")
        tmp.write_text(json.dumps(index, indent=2))
        os.replace(tmp, out_dir / INDEX_FILE)
    elif writer:
        (out_dir / INDEX_FILE).unlink(missing_ok=True)
    return files


def save_pretrained(params: dict, model_cfg: Any, out_dir: str | Path, tokenizer: Any = None,
                    max_shard_bytes: int = 2 * 10**9, max_position_embeddings: int | None = None,
                    dtype: str = "float32", *, eos_token: str | None = None, bos_token: str | None = None) -> Path:
    """hf.save_pretrained with the weights streamed from (sharded) params by `write_streamed`:
    config.json, tokenizer (with the run's eos_token / bos_token) and generation config as there,
    and no whole-model gather."""

    return hf.save_pretrained(
        params, model_cfg, out_dir, tokenizer, max_shard_bytes, max_position_embeddings, dtype,
        write_weights=lambda d: write_streamed(params, model_cfg, d, dtype=dtype, max_shard_bytes=max_shard_bytes),
        eos_token=eos_token, bos_token=bos_token)
