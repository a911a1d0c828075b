"""A TCP forwarder in front of a real server that a test can cut partway, like a network partition.

Until it is cut, bytes flow both ways untouched. It is cut when the client starts its ``cut_at``-th request whose
request line matches ``pattern``: that request is dropped mid-flight and every open connection closed. From then
on each new connection is accepted, its request line recorded with the time, and closed at once, until ``heal()``.
"""

from __future__ import annotations

import re
import socket
import threading
import time

REQUEST_LINE = re.compile(rb"(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP/1\.[01]\r\n")


class CuttableProxy:
    def __init__(self, upstream: str, pattern: bytes | None = None, cut_at: int = 1):
        host, _, port = upstream.removeprefix("http://").rstrip("/").partition(":")
        self.upstream = (host, int(port))
        self.pattern, self.cut_at = pattern, cut_at
        self.matched = 0
        self.cut = threading.Event()
        self.requests: list[tuple[float, str, str, bool]] = []  # (time, method, path, refused)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def heal(self) -> None:
        self.pattern = None
        self.cut.clear()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self._drop_all()

    def refused(self, method: str, path_part: str) -> list[float]:
        """Times of the refused requests (and of the one that was cut) for this method and path."""
        with self._lock:
            return [t for t, m, p, refused in self.requests if m == method and path_part in p and refused]

    # ----- internals ---------------------------------------------------------------------------------------------
    def _record(self, data: bytes, refused: bool) -> None:
        with self._lock:
            for m in REQUEST_LINE.finditer(data):
                self.requests.append((time.time(), m.group(1).decode(), m.group(2).decode(), refused))

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.cut.is_set():
                threading.Thread(target=self._refuse, args=(client,), daemon=True).start()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _refuse(self, client: socket.socket) -> None:
        client.settimeout(2)
        try:
            self._record(client.recv(65536), refused=True)
        except OSError:
            pass
        finally:
            client.close()

    def _trips(self, data: bytes) -> bool:
        """Whether this chunk starts the request that cuts the line."""
        if self.pattern is None:
            return False
        for m in REQUEST_LINE.finditer(data):
            if re.search(self.pattern, m.group(0)):
                self.matched += 1
                if self.matched >= self.cut_at:
                    return True
        return False

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_client and self._trips(data):
                    self.cut.set()
                    self._record(data, refused=True)
                    self._drop_all()
                    return
                if from_client:
                    self._record(data, refused=False)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self._lock:
            self._open.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def _drop_all(self) -> None:
        with self._lock:
            sockets = list(self._open)
        for s in sockets:
            self._close(s)
