"""The "outside" for the egress tests, run inside a network namespace of its own (``python -m`` not needed:
``python egress_targets.py DIR ALLOWED_IP DENIED_IP``): on each address an HTTP server on 8080 and an HTTPS
server on 8443 answering with their name ("allowed" / "denied"), a DNS server on ALLOWED_IP:53 answering
every A question with DENIED_IP, and a UDP sink on ALLOWED_IP:5353. What reached the DNS server and the
sink is appended to DIR/received. DIR/cert.pem and DIR/key.pem are the HTTPS servers' self-signed pair.
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import ssl
import struct
import sys
import threading
from pathlib import Path


class Quiet(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # not HTTPServer's: its getfqdn() waits on DNS, none here
        self.server_name, self.server_port = self.server_address[:2]  # type: ignore[assignment]


def http_server(address: str, port: int, name: str, context: ssl.SSLContext | None) -> None:
    handler = type(f"Handler{name}{port}", (Quiet,), {"body": f"{name} {'https' if context else 'http'}\n".encode()})
    server = Server((address, port), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def udp(address: str, port: int, answer: str | None, log: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))

    def serve() -> None:
        while True:
            data, peer = sock.recvfrom(4096)
            with log.open("a") as f:
                f.write(f"{port} {peer[0]} {data!r}\n")
            if answer is not None and len(data) > 12:
                question = data[12:]
                end = question.index(b"\0") + 5
                reply = data[:2] + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00" + question[:end]
                reply += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(answer)
                sock.sendto(reply, peer)

    threading.Thread(target=serve, daemon=True).start()


def main() -> None:
    directory, allowed, denied = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    context.set_ciphers("ALL:@SECLEVEL=0")  # busybox wget's own TLS offers a few old suites only
    for address, name in ((allowed, "allowed"), (denied, "denied")):
        http_server(address, 8080, name, None)
        http_server(address, 8443, name, context)
    received = directory / "received"
    received.touch()
    udp(allowed, 53, denied, received)
    udp(allowed, 5353, None, received)
    (directory / "ready").write_text("ready\n")
    threading.Event().wait()


if __name__ == "__main__":
    main()
