"""Data wing, remote reads: the loader from a real S3 server (moto, the s3_emulator fixture) behind the
latency-injecting proxy of experiments/latency_proxy.py gives the same batches bitwise as from local shards, fetches
exactly the bytes of the windows (one ranged GET per window piece), reads ahead by default, resumes exactly, and
names a truncated remote shard; the proxy's HTTP framing counts."""

from __future__ import annotations

import collections
import pickle
import sys

import grain
import jax
import numpy as np
import pytest
from etils import epath

from conftest import REPO
from data_common import make_docs, write_formats
from jaxgrow.data import pipeline, shards, store as store_lib
from jaxgrow.data.formats import DataError


sys.path.insert(0, str(REPO / "experiments"))
from latency_proxy import LatencyProxy, ResponseFraming  # noqa: E402


SEQ, BATCH = 32, 8
BUCKET = "jaxgrow-test"


@pytest.fixture()
def bucket_corpus(tmp_path, bpe, s3_emulator, monkeypatch):
    """(local dir, manifest, proxy): a tokenized corpus in small shards (so windows straddle shards), locally and
    uploaded to s3://jaxgrow-test/tok; s3fs then points at a 20 ms proxy in front of the emulator."""
    import s3fs

    files = write_formats(tmp_path / "in", make_docs(400, seed=3))
    local = tmp_path / "tok"
    manifest = shards.tokenize_files([epath.Path(files[".jsonl"])], epath.Path(local), bpe, shard_tokens=1000,
                                     progress=False)
    assert len(manifest["shards"]) >= 4
    s3fs.S3FileSystem().put(str(local / "shards"), f"{BUCKET}/tok/", recursive=True)
    host, port = s3_emulator["AWS_ENDPOINT_URL"].removeprefix("http://").split(":")
    with LatencyProxy(host, int(port), latency_ms=20) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
        s3fs.S3FileSystem.clear_instance_cache()  # the next filesystem reads the new endpoint
        yield local, manifest, proxy
    s3fs.S3FileSystem.clear_instance_cache()


def stores(local, manifest):
    return store_lib.TokenStore([(f"s3://{BUCKET}/tok", manifest)]), store_lib.TokenStore([(local, manifest)])


def batches(it, n):
    return [np.asarray(next(it)) for _ in range(n)]


def test_remote_batches_equal_local_bitwise_and_fetch_exactly_the_window_bytes(bucket_corpus):
    local_dir, manifest, proxy = bucket_corpus
    remote, local = stores(local_dir, manifest)
    assert remote.remote and not local.remote
    # a range across a shard boundary comes back whole, from two ranged GETs of exactly its bytes
    edge = int(remote.offsets[2])
    proxy.reset()
    np.testing.assert_array_equal(remote[edge - 5:edge + 6], local[edge - 5:edge + 6])
    counts = proxy.stats()
    assert counts["requests"] == 2 and counts["response_body_bytes"] == 11 * np.dtype(manifest["dtype"]).itemsize

    # what crosses the socket for a batch read: one GET per window piece, each body exactly the piece's bytes, so
    # bytes fetched / bytes used is 1.0 (goal <= 1.2): no read-ahead blocks, no re-reads. Measured before any
    # read-ahead thread exists, so every byte counted is from these reads.
    remote_ds = pipeline.train_dataset(remote, SEQ, BATCH, seed=0)
    local_ds = pipeline.train_dataset(local, SEQ, BATCH, seed=0)
    windows = pipeline.mixed_windows(local, SEQ, seed=0)
    proxy.reset()
    picks = range(20, 26)
    for k in picks:
        remote_ds[k]
    counts = proxy.stats()
    itemsize = np.dtype(manifest["dtype"]).itemsize
    used = len(picks) * BATCH * (SEQ + 1) * itemsize
    # the source window behind each row: the same seeded shuffle and repeat over the window indices
    source = pipeline.WindowSource(local, SEQ)
    index = grain.MapDataset.range(len(source)).seed(0).shuffle().repeat(None)
    rows = [int(index[w]) for k in picks for w in range(k * BATCH, (k + 1) * BATCH)]
    np.testing.assert_array_equal(source[rows[3]], windows[picks[0] * BATCH + 3])
    pieces = sum(len(remote._pieces(i * SEQ, i * SEQ + SEQ + 1)) for i in rows)
    assert counts["requests"] == counts["responses"] == pieces
    assert counts["response_body_bytes"] == used

    assert remote_ds.read_ahead == pipeline.REMOTE_READ_AHEAD > 0 and local_ds.read_ahead == 0
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    remote_it, local_it = pipeline.DeviceIterator(remote_ds, device), pipeline.DeviceIterator(local_ds, device)
    assert remote_it.read_ahead == pipeline.REMOTE_READ_AHEAD and local_it.read_ahead == 0
    got, want = batches(remote_it, 12), batches(local_it, 12)
    remote_it.close()
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype == np.int32 and g.shape == (BATCH, SEQ + 1)
        np.testing.assert_array_equal(g, w)
    # the rows are the windows the shuffled, repeated source names, in order
    np.testing.assert_array_equal(want[5], np.stack([windows[5 * BATCH + r] for r in range(BATCH)]))
    for g, w in zip(pipeline.eval_batches(remote, SEQ, BATCH, 3), pipeline.eval_batches(local, SEQ, BATCH, 3)):
        np.testing.assert_array_equal(g, w)


def test_remote_read_ahead_resumes_at_the_consumed_batch(bucket_corpus):
    local_dir, manifest, _ = bucket_corpus
    remote, local = stores(local_dir, manifest)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    whole = pipeline.DeviceIterator(pipeline.train_dataset(remote, SEQ, BATCH, seed=1), device, prefetch=2)
    first = batches(whole, 5)
    # the batches read ahead (4) and prefetched to the device (2) are not counted as consumed
    state = whole.state()
    assert state == {"next_index": 5}
    rest = batches(whole, 6)
    whole.close()
    resumed = pipeline.DeviceIterator(pipeline.train_dataset(remote, SEQ, BATCH, seed=1), device, prefetch=2,
                                      state=state)
    again = batches(resumed, 6)
    resumed.close()
    reference = pipeline.train_dataset(local, SEQ, BATCH, seed=1)
    for k, (r, a) in enumerate(zip(rest, again, strict=True)):
        np.testing.assert_array_equal(r, a)
        np.testing.assert_array_equal(a, reference[5 + k])
    np.testing.assert_array_equal(first[0], reference[0])


def test_remote_read_ahead_in_worker_processes_gives_the_same_batches(bucket_corpus):
    """data.workers=1: the store pickles into a grain worker process, which opens its own filesystem there."""
    local_dir, manifest, _ = bucket_corpus
    remote, local = stores(local_dir, manifest)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    it = pipeline.DeviceIterator(pipeline.train_dataset(remote, SEQ, BATCH, seed=2), device, workers=1,
                                 state={"next_index": 3})
    got = batches(it, 4)
    it.close()
    reference = pipeline.train_dataset(local, SEQ, BATCH, seed=2)
    for k, g in enumerate(got):
        np.testing.assert_array_equal(g, reference[3 + k])


def test_truncated_remote_shard_is_a_data_error_naming_it(bucket_corpus):
    import s3fs

    local_dir, manifest, _ = bucket_corpus
    name = manifest["shards"][1]["name"]
    s3fs.S3FileSystem().pipe(f"{BUCKET}/tok/shards/{name}", (local_dir / "shards" / name).read_bytes()[:100])
    remote, _ = stores(local_dir, manifest)
    start = int(remote.offsets[1])
    with pytest.raises(DataError, match=f"shards/{name} is shorter than its manifest says"):
        remote.read_ranges([(0, 10), (start + 40, start + 80)])


def test_local_read_ranges_match_slices_across_shards(tmp_path, bpe):
    files = write_formats(tmp_path / "in", make_docs(200, seed=4))
    manifest = shards.tokenize_files([epath.Path(files[".jsonl"])], epath.Path(tmp_path / "tok"), bpe,
                                     shard_tokens=300, progress=False)
    store = store_lib.TokenStore([(tmp_path / "tok", manifest)])
    whole = np.concatenate([np.fromfile(tmp_path / "tok" / "shards" / s["name"], "<u2") for s in manifest["shards"]])
    rng = np.random.default_rng(0)
    ranges = [(int(a), int(a) + int(n)) for a, n in zip(rng.integers(0, len(whole) - 700, 50), rng.integers(0, 700, 50))]
    ranges.append((len(whole) - 3, len(whole)))
    for (a, b), got in zip(ranges, store.read_ranges(ranges), strict=True):
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, whole[a:b])
    assert store[5:5].shape == (0,) and not store.remote
    # the store pickles without descriptors (grain worker processes) and reads the same afterwards
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(store))[10:400], whole[10:400])


def test_proxy_framing_splits_headers_from_bodies_at_any_chunk_boundary():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4\r\nwiki\r\n6;ext=1\r\npedia!\r\n0\r\nX-Trailer: t\r\n\r\n")
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    stream = interim + head + b"hello" + b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n" + chunked
    methods = [b"PUT", b"HEAD", b"GET"]  # the HEAD response's Content-Length announces no body
    body = 5 + 10
    for step in (1, 3, 7, len(stream)):
        counts = collections.Counter()
        framing = ResponseFraming(counts)
        framing.methods.extend(methods)
        for i in range(0, len(stream), step):
            framing.feed(stream[i:i + step])
        assert counts["responses"] == 3 and framing.state == "head", step
        assert counts["response_body_bytes"] == body and counts["response_header_bytes"] == len(stream) - body, step


def test_proxy_delays_and_counts_each_request_on_a_keep_alive_connection():
    """Every request on one keep-alive connection is counted (and delayed), not only the connection's first."""
    import http.client
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            payload = self.path.encode() * 3
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with LatencyProxy("127.0.0.1", server.server_address[1], latency_ms=5) as proxy:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port)
            sizes = 0
            for i in range(7):
                conn.request("GET", f"/k{i}")
                sizes += len(conn.getresponse().read())
            conn.close()
            counts = proxy.stats()
    finally:
        server.shutdown()
    assert counts["connections"] == 1 and counts["requests"] == counts["responses"] == 7
    assert counts["response_body_bytes"] == sizes == sum(len(f"/k{i}") * 3 for i in range(7))


def test_gcs_bucket_reads_equal_local(tmp_path, bpe, gcs_emulator):
    """gs:// (gcp-storage-emulator): the same batched ranged reads through gcsfs."""
    import gcsfs

    files = write_formats(tmp_path / "in", make_docs(150, seed=5))
    local_dir = tmp_path / "tok"
    manifest = shards.tokenize_files([epath.Path(files[".jsonl"])], epath.Path(local_dir), bpe, shard_tokens=500,
                                     progress=False)
    fs = gcsfs.GCSFileSystem()
    for s in manifest["shards"]:
        fs.pipe(f"{BUCKET}/tok/shards/{s['name']}", (local_dir / "shards" / s["name"]).read_bytes())
    remote = store_lib.TokenStore([(f"gs://{BUCKET}/tok", manifest)])
    local = store_lib.TokenStore([(local_dir, manifest)])
    remote_ds, local_ds = (pipeline.train_dataset(s, SEQ, 4, seed=3) for s in (remote, local))
    assert remote_ds.read_ahead > 0
    for k in (0, 7):
        np.testing.assert_array_equal(remote_ds[k], local_ds[k])
    edge = int(remote.offsets[1])
    np.testing.assert_array_equal(remote[edge - 3:edge + 3], local[edge - 3:edge + 3])
