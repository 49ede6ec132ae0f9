"""Safetensors checkpoint files of the Hugging Face layout: writing (one file, or shards plus an index), reading
(BF16 upcast to float32, exactly), locating a checkpoint's weight files, and the JSON files beside them. Knows
nothing of the weight mapping (hf.py) or of a workdir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from jaxgrow import storage
from jaxgrow.config import InputError


DEFAULT_MAX_SHARD_BYTES = 2 * 10**9
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class HFError(InputError):
    """An HF checkpoint or export target we cannot handle; one line naming the file or flag."""


def split_shards(tensors: dict[str, np.ndarray], max_shard_bytes: int) -> list[dict[str, np.ndarray]]:
    """Greedy split in order; a tensor larger than the limit gets a shard of its own."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, x in tensors.items():
        if shards[-1] and size + x.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = x
        size += x.nbytes
    return shards


def remove_stale_weights(out_dir: Path) -> None:
    for p in list(out_dir.glob("model*.safetensors")) + [out_dir / INDEX_FILE]:
        if p.is_file():
            p.unlink()


def write_safetensors(tensors: dict[str, np.ndarray], out_dir: Path,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[Path]:
    """model.safetensors, or model-0000i-of-0000N.safetensors + model.safetensors.index.json."""
    remove_stale_weights(out_dir)
    shards = split_shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(out_dir / SINGLE_FILE), metadata={"format": "pt"})
        return [out_dir / SINGLE_FILE]
    files, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out_dir / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        files.append(out_dir / name)
    index = {"metadata": {"total_size": sum(x.nbytes for x in tensors.values()),
                          "total_parameters": sum(x.size for x in tensors.values())},
             "weight_map": weight_map}
    write_json(out_dir / INDEX_FILE, index)
    return files


def safetensors_header(path: Path) -> tuple[dict, int]:
    """(header: name -> {dtype, shape, data_offsets}, byte offset of the data section)."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(header_len)), 8 + header_len


def read_bf16(path: Path, info: dict, data_start: int) -> np.ndarray:
    """One BF16 tensor as float32 (exact): numpy has no bfloat16 and safetensors.numpy refuses it,
    so the bytes are viewed as ml_dtypes.bfloat16."""
    start, end = info["data_offsets"]
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start + start, shape=(end - start,))
    return np.asarray(raw).view(ml_dtypes.bfloat16).reshape(info["shape"]).astype(np.float32)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of one safetensors file as numpy arrays (BF16 upcast to float32)."""
    out = {}
    try:
        with safe_open(str(path), framework="np") as f:
            names = list(f.keys())
            bf16 = {n for n in names if f.get_slice(n).get_dtype() == "BF16"}
            for name in names:
                if name not in bf16:
                    out[name] = f.get_tensor(name)
        if bf16:
            header, data_start = safetensors_header(path)
            for name in bf16:
                out[name] = read_bf16(path, header[name], data_start)
    except (SafetensorError, OSError, ValueError, TypeError, KeyError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HFError(f"{path}: cannot read it as safetensors ({detail})") from None
    return out


def weight_files(hf_dir: Path) -> list[Path]:
    index = hf_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = read_json(index)["weight_map"]
        except (KeyError, TypeError):
            raise HFError(f"{index}: has no weight_map") from None
        files = [hf_dir / f for f in dict.fromkeys(weight_map.values())]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise HFError(f"{index}: names missing shard {missing[0]}")
        return files
    if (hf_dir / SINGLE_FILE).is_file():
        return [hf_dir / SINGLE_FILE]
    if any(hf_dir.glob("pytorch_model*.bin")):
        raise HFError(f"--hf={hf_dir}: only safetensors checkpoints are supported (found pytorch_model*.bin; "
                      "re-save it with save_pretrained(..., safe_serialization=True))")
    raise HFError(f"--hf={hf_dir}: no {SINGLE_FILE} or {INDEX_FILE}")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFError(f"{path}: cannot read it as JSON ({type(e).__name__})") from None


def write_json(path: Path, obj: Any) -> None:
    storage.atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
