"""A TCP proxy on 127.0.0.1 that a test can tell to cut every connection
open through it, as a network that drops (a phone that locks, a Wi-Fi
that changes): both ends are shut down at once, the client sees its
connection fail and the server sees its client go.

    with CutProxy(stack.port) as proxy:   # proxy.port: where to connect
        ...
        proxy.cut()

Used between Chromium and nginx by the browser tests of resumable streams
(issue 12). Threads, Python 3 standard library only; it only ever listens
on and connects to 127.0.0.1."""

import contextlib
import socket
import threading


class CutProxy:
    def __init__(self, target_port):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0  # connections taken so far
        self.cuts = 0  # connections cut so far
        self._lock = threading.Lock()
        self._open = set()  # (client, server) socket pairs
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = (client, server)
            with self._lock:
                if self._closed:
                    _shut(pair)
                    return
                self._open.add(pair)
                self.accepted += 1
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(self, src, dst, pair):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        # One side ended or failed: the connection is over for both.
        with self._lock:
            self._open.discard(pair)
        _shut(pair)

    def open_connections(self):
        with self._lock:
            return len(self._open)

    def cut(self):
        """Cut every connection open now; returns how many."""
        with self._lock:
            pairs = list(self._open)
            self._open.clear()
            self.cuts += len(pairs)
        for pair in pairs:
            _shut(pair)
        return len(pairs)

    def close(self):
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        with contextlib.suppress(OSError):
            self.listener.close()
        self.cut()
        self._thread.join(5)


def _shut(pair):
    for s in pair:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()
