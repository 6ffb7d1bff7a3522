"""A TCP proxy on 127.0.0.1 that a test controls, to put faults between a server and its
database.

- ``forward()``: bytes flow both ways (the initial state);
- ``freeze()``: connections stay open and new ones are accepted, but no byte moves: the
  database looks alive to TCP and never answers (as when it is stopped with SIGSTOP);
- ``cut()``: every open connection is closed and new ones are closed at once (as when the
  database host goes away);
- ``on_commit(action, after)``: a fault at the COMMIT of one transaction, the first
  whose connection sends ``after`` (a piece of one of its statements) and then a COMMIT
  (a MariaDB client sends it as a query packet of its own). ``"freeze"`` holds that
  COMMIT and freezes everything as ``freeze()`` does; ``forward()`` then sends the COMMIT
  on first, so the transaction commits late, after its client stopped waiting.
  ``"cut"`` sends the COMMIT on, lets the database answer it, and closes the connection
  instead of passing the answer back: the transaction committed and its client never
  hears. ``commit_caught`` is set when the fault has happened.
"""

from __future__ import annotations

import selectors
import socket
import threading
from typing import Literal

Mode = Literal["forward", "freeze", "cut"]
# a COMMIT and a ROLLBACK as a MariaDB client sends them: a packet of 7 (9) bytes, sequence
# number 0, COM_QUERY (3), the statement
COMMIT = b"\x07\x00\x00\x00\x03COMMIT"
ROLLBACK = b"\x09\x00\x00\x00\x03ROLLBACK"


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
        self._clients: set[socket.socket] = set()
        # the COMMIT fault: (action, statement piece), connections that sent the piece,
        # a held COMMIT, and upstream sockets whose next answer is dropped
        self._commit_fault: tuple[str, bytes] | None = None
        self._armed: set[socket.socket] = set()
        self._held: list[tuple[socket.socket, bytes]] = []
        self._swallow: set[socket.socket] = set()
        self.commit_caught = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcpproxy", daemon=True)
        self._thread.start()

    def forward(self) -> None:
        with self._lock:
            self.mode = "forward"
            held, self._held = self._held, []
            for sock, data in held:
                upstream = self._pairs.get(sock)
                if upstream is not None:
                    try:
                        upstream.sendall(data)
                    except OSError:
                        self._drop(sock)

    def on_commit(self, action: Literal["freeze", "cut"], after: bytes) -> None:
        with self._lock:
            self._commit_fault = (action, after)
            self._armed.clear()
            self.commit_caught.clear()

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
            self._clients.discard(s)
            self._armed.discard(s)
            self._swallow.discard(s)
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
        self._clients.add(client)
        self._sel.register(client, selectors.EVENT_READ)
        self._sel.register(upstream, selectors.EVENT_READ)

    def _at_commit(self, sock: socket.socket, data: bytes) -> bool:
        """The COMMIT fault, for a chunk a client sent: True if the chunk was taken care
        of (held, or sent on with its answer to be swallowed)."""
        assert self._commit_fault is not None
        action, after = self._commit_fault
        if after in data:
            self._armed.add(sock)
        if ROLLBACK in data:
            self._armed.discard(sock)
        if sock not in self._armed or COMMIT not in data:
            return False
        self._commit_fault = None
        self._armed.clear()
        if action == "freeze":
            self._held.append((sock, data))
            self.mode = "freeze"
        else:
            upstream = self._pairs[sock]
            try:
                upstream.sendall(data)
            except OSError:
                self._drop(sock)
            else:
                self._swallow.add(upstream)
        self.commit_caught.set()
        return True

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
                    if sock in self._swallow:  # the answer to a COMMIT, never delivered
                        self._drop(sock)
                        continue
                    if self._commit_fault is not None and sock in self._clients \
                            and self._at_commit(sock, data):
                        continue
                    try:
                        self._pairs[sock].sendall(data)
                    except OSError:
                        self._drop(sock)
            if self.mode == "freeze" and events:
                # readable sockets stay readable while frozen; do not spin on them
                self._stop.wait(0.05)
