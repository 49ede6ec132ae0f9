"""Shared helpers of the data-wing tests: generated documents (never seen elsewhere) in every input format."""

import gzip
import json
from pathlib import Path

import numpy as np


# Text the tests have never seen elsewhere: generated, not from the shipped corpus.
WORDS = ("amber river lantern quiet orbit falcon meadow copper signal harbor velvet thunder cedar "
         "pixel marble canyon ember willow prism glacier").split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 60)))) + f". Document {i}." for i in range(n)]


def write_formats(d: Path, docs: list[str]) -> dict[str, Path]:
    """The same documents as .jsonl, .jsonl.gz, .jsonl.zst and .parquet (two row groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    d.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(docs)).encode()
    out = {".jsonl": d / "a.jsonl", ".jsonl.gz": d / "a.jsonl.gz", ".jsonl.zst": d / "a.jsonl.zst",
           ".parquet": d / "a.parquet"}
    out[".jsonl"].write_bytes(lines)
    out[".jsonl.gz"].write_bytes(gzip.compress(lines))
    out[".jsonl.zst"].write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.table({"text": docs, "id": list(range(len(docs)))}), out[".parquet"],
                   row_group_size=max(1, len(docs) // 2))
    return out


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}
