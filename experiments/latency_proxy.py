"""A TCP proxy on 127.0.0.1 that adds a fixed latency to every HTTP request and counts what crosses it.

    python experiments/latency_proxy.py --target 127.0.0.1:9000 [--latency_ms 50] [--port 0]

prints {"port": P} on stdout, then answers each line on stdin ("stats", or "reset": zero the counters)
with one JSON line of counters; exits at end of stdin (`ProxyProcess` runs it so). In a process:
`with LatencyProxy(host, port, 50) as p:` (`p.port`, `p.stats()`, `p.reset()`).

The delay models a round trip to a bucket: each client chunk that starts a request waits `latency_ms` before it is
forwarded, on its own connection only, so requests on different connections overlap as they would over a real
network, and keep-alive connections (s3fs and gcsfs reuse theirs) pay it per request, not per connection. A chunk
starts a request when it is the connection's first, or the server has sent bytes since the client's last chunk
(HTTP/1.1 without pipelining; a request body sent after `100 Continue` pays one more round trip, as it would over a
network). Connection set-up (TCP, TLS) adds nothing.

Counting: every byte each way, and the server's bytes split by HTTP/1.1 framing into status line + headers (and
chunk framing) versus message bodies, so "bytes fetched" can be the payload alone or everything on the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import subprocess
import sys
import threading

_REQUEST_LINE = re.compile(rb"^([A-Z]+) \S+ HTTP/1\.[01]\r\n")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r]*chunked", re.IGNORECASE)


class ResponseFraming:
    """Incremental HTTP/1.1 response framing of one connection's server-to-client bytes: counts header bytes (status
    lines, headers, chunk-size lines, trailers) and body bytes. `methods` holds the methods of requests whose final
    response has not started (HEAD responses and 1xx, 204, 304 have no body)."""

    def __init__(self, counters: collections.Counter):
        self.counters = counters
        self.methods: collections.deque = collections.deque()
        self.state, self.pending, self.left, self.chunked = "head", b"", 0, False

    def feed(self, data: bytes) -> None:
        c = self.counters
        while data:
            if self.state == "body":  # `left` bytes of a Content-Length body or of one chunk's data
                n = min(self.left, len(data))
                c["response_body_bytes"] += n
                self.left -= n
                data = data[n:]
                if not self.left:
                    self.state = "chunk_end" if self.chunked else "head"
                continue
            if self.state == "until_close":
                c["response_body_bytes"] += len(data)
                return
            self.pending += data
            end = b"\r\n\r\n" if self.state == "head" else b"\r\n"
            cut = self.pending.find(end)
            if cut < 0:
                return  # framing bytes are counted once they are complete
            cut += len(end)
            line, data, self.pending = self.pending[:cut], self.pending[cut:], b""
            c["response_header_bytes"] += len(line)
            if self.state == "head":
                self._start(line)
            elif self.state == "chunk_size":
                self.left = int(line.split(b";")[0].strip() or b"0", 16)
                self.state = "body" if self.left else "trailer"
            elif self.state == "chunk_end":
                self.state = "chunk_size"
            elif line == b"\r\n":  # trailer lines end with an empty one, and so does the message
                self.state = "head"

    def _start(self, head: bytes) -> None:
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):  # not HTTP/1.x: count the rest as payload
            self.state = "until_close"
            return
        if 100 <= status < 200:
            return  # an interim response; the final one follows for the same request
        self.counters["responses"] += 1
        method = self.methods.popleft() if self.methods else b"GET"
        self.chunked = False
        if method == b"HEAD" or status in (204, 304):
            return
        if _CHUNKED.search(head):
            self.chunked, self.state = True, "chunk_size"
        elif (m := _CONTENT_LENGTH.search(head)) is not None:
            self.left = int(m.group(1))
            self.state = "body" if self.left else "head"
        else:
            self.state = "until_close"


class LatencyProxy:
    """The proxy, run on its own event loop in a daemon thread (a context manager)."""

    def __init__(self, target_host: str, target_port: int, latency_ms: float, port: int = 0):
        self.target = (target_host, target_port)
        self.latency = latency_ms / 1000
        self.port = port
        self.counters: collections.Counter = collections.Counter()
        self._loop = asyncio.new_event_loop()
        self._server = None
        # asyncio keeps only weak references to tasks; a connection whose two sockets are both idle would be
        # collected mid-request ("Task was destroyed but it is pending") without one here
        self._connections: set = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="latency-proxy")

    def __enter__(self) -> "LatencyProxy":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port), self._loop).result()
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        async def stop():
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def stats(self) -> dict:
        return self._on_loop(lambda: dict(self.counters, open_connections=len(self._connections),
                                          latency_ms=self.latency * 1000))

    def reset(self) -> None:
        self._on_loop(self.counters.clear)

    def _on_loop(self, fn):
        """fn() run on the proxy's loop, between its callbacks (which are what update the counters)."""
        async def call():
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        self.counters["connections"] += 1
        self._connections.add(asyncio.current_task())
        framing = ResponseFraming(self.counters)
        answered = [True]  # the server has sent bytes since the client's last chunk (or nothing was sent yet)

        async def upstream():
            while data := await client_r.read(1 << 16):
                if answered[0]:
                    answered[0] = False
                    m = _REQUEST_LINE.match(data)
                    if m is not None:
                        self.counters["requests"] += 1
                        framing.methods.append(m.group(1))
                    await asyncio.sleep(self.latency)
                self.counters["request_bytes"] += len(data)
                server_w.write(data)
                await server_w.drain()
            if server_w.can_write_eof():
                server_w.write_eof()  # a half-close: the response may still be on its way

        async def downstream():
            while data := await server_r.read(1 << 16):
                answered[0] = True
                self.counters["response_bytes"] += len(data)
                framing.feed(data)
                client_w.write(data)
                await client_w.drain()
            if client_w.can_write_eof():
                client_w.write_eof()

        try:
            await asyncio.gather(upstream(), downstream())
        except (OSError, RuntimeError, asyncio.CancelledError):  # a peer reset the connection, or shutdown
            pass
        finally:
            self._connections.discard(asyncio.current_task())
            for w in (client_w, server_w):
                w.close()


class ProxyProcess:
    """This module's proxy in a child process (its CPU and GIL then are not the caller's): `.url`, `.pid`,
    `.ask("stats" | "reset")` -> counters, `.close()`."""

    def __init__(self, target_port: int, latency_ms: float, target_host: str = "127.0.0.1"):
        self.proc = subprocess.Popen([sys.executable, __file__, "--target", f"{target_host}:{target_port}",
                                      "--latency_ms", str(latency_ms)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.port = json.loads(self.proc.stdout.readline())["port"]
        self.url = f"http://127.0.0.1:{self.port}"

    def ask(self, command: str = "stats") -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="HOST:PORT of the server")
    ap.add_argument("--latency_ms", type=float, default=50.0)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    host, port = args.target.rsplit(":", 1)
    with LatencyProxy(host, int(port), args.latency_ms, args.port) as proxy:
        print(json.dumps({"port": proxy.port}), flush=True)
        for line in sys.stdin:
            if line.strip() == "reset":
                proxy.reset()
            print(json.dumps(proxy.stats()), flush=True)


if __name__ == "__main__":
    main()
