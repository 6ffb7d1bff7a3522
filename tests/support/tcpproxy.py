"""A TCP proxy on 127.0.0.1 that a test controls, to put faults between a server and its
database.

- ``forward()``: bytes flow both ways (the initial state);
- ``freeze()``: connections stay open and new ones are accepted, but no byte moves: the
  database looks alive to TCP and never answers (as when it is stopped with SIGSTOP);
- ``cut()``: every open connection is closed and new ones are closed at once (as when the
  database host goes away).
"""

from __future__ import annotations

import selectors
import socket
import threading
from typing import Literal

Mode = Literal["forward", "freeze", "cut"]


class TCPProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.mode: Mode = "forward"
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcpproxy", daemon=True)
        self._thread.start()

    def forward(self) -> None:
        self.mode = "forward"

    def freeze(self) -> None:
        self.mode = "freeze"

    def cut(self) -> None:
        with self._lock:
            self.mode = "cut"
            for sock in list(self._pairs):
                self._drop(sock)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            for sock in list(self._pairs):
                self._drop(sock)
        self.listener.close()
        self._sel.close()

    def _drop(self, sock: socket.socket) -> None:
        other = self._pairs.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._pairs.pop(s, None)
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        if self.mode == "cut":
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.settimeout(5)
        self._pairs[client] = upstream
        self._pairs[upstream] = client
        self._sel.register(client, selectors.EVENT_READ)
        self._sel.register(upstream, selectors.EVENT_READ)

    def _run(self) -> None:
        while not self._stop.is_set():
            # while frozen, nothing is read: the kernel buffers fill and both ends wait
            events = self._sel.select(timeout=0.05)
            with self._lock:
                for key, _ in events:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self.listener:
                        self._accept()
                        continue
                    if self.mode != "forward" or sock not in self._pairs:
                        continue
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self._drop(sock)
                        continue
                    try:
                        self._pairs[sock].sendall(data)
                    except OSError:
                        self._drop(sock)
            if self.mode == "freeze" and events:
                # readable sockets stay readable while frozen; do not spin on them
                self._stop.wait(0.05)
