"""A pod's servers: every declared port in one process, driven by one selector.

Run as a script inside the pod's namespace (``python -S podserver.py NAME PORT/PROTO ...``,
no import of flannel_ext, so it starts in a few milliseconds):

- TCP and SCTP: on accept, send ``NAME\\n`` (so a prober knows which pod answered), then
  echo every byte received until the peer closes;
- UDP: answer each datagram with ``NAME\\n`` followed by the datagram.

A protocol the kernel lacks (SCTP without the sctp module) is skipped with one line on
stdout; the other ports are still served.
"""
from __future__ import annotations

import selectors
import socket
import sys


def _listen(port: int, proto: str) -> socket.socket:
    if proto == "UDP":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM,
                             socket.IPPROTO_SCTP if proto == "SCTP" else 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("", port))
    if proto != "UDP":
        sock.listen(512)
    sock.setblocking(False)
    return sock


def serve(name: str, specs: list[str]) -> None:
    greeting = (name + "\n").encode()
    sel = selectors.DefaultSelector()
    for spec in specs:
        port, proto = spec.split("/")
        try:
            sock = _listen(int(port), proto.upper())
        except OSError as exc:
            print(f"{name}: not serving {spec}: {exc.strerror}", flush=True)
            continue
        sel.register(sock, selectors.EVENT_READ, "udp" if proto.upper() == "UDP" else "listen")
        print(f"{name}: serving {spec}", flush=True)
    while True:
        for key, _ in sel.select():
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            try:
                if key.data == "udp":
                    data, addr = ready.recvfrom(65535)
                    ready.sendto(greeting + data, addr)
                elif key.data == "listen":
                    conn, _ = ready.accept()
                    conn.setblocking(False)
                    conn.send(greeting)
                    sel.register(conn, selectors.EVENT_READ, "conn")
                else:
                    data = ready.recv(65536)
                    if data:
                        ready.send(data)
                    else:
                        raise ConnectionResetError
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                if key.data == "conn":
                    sel.unregister(ready)
                    ready.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
