"""SIP over TLS peers that the lab runs *inside* a namespace (``ip netns exec NS python FILE ...``).

Stdlib only, executed by path (like ``_nstools.py``); ``nfsiplab.tls`` is the API around it.

Subcommands::

    serve IP PORT CERT KEY LOG      a registrar stand-in: accept TLS connections, answer every SIP
                                    request with a 200 OK, one JSON line per event in LOG
    send IP PORT CAFILE MESSAGE_FILE LOCAL_IP LOCAL_PORT HOLD_S
                                    connect from LOCAL_IP:LOCAL_PORT, verify the server against
                                    CAFILE, send the message, read one response, keep the
                                    connection HOLD_S seconds, close; a JSON summary on stdout
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time

HEADER_END = b"\r\n\r\n"
MAX_MESSAGE = 65536


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def read_message(conn: ssl.SSLSocket, buffer: bytearray) -> bytes | None:
    """One SIP message off the stream (headers, then Content-Length bytes of body); None at EOF."""
    while HEADER_END not in buffer:
        chunk = conn.recv(4096)
        if not chunk or len(buffer) > MAX_MESSAGE:
            return None
        buffer += chunk
    head_len = buffer.index(HEADER_END) + len(HEADER_END)
    length = 0
    for line in bytes(buffer[:head_len]).split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"content-length", b"l"):
            length = int(value.strip())
    while len(buffer) < head_len + length:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        buffer += chunk
    message = bytes(buffer[: head_len + length])
    del buffer[: head_len + length]
    return message


def ok_response(request: bytes) -> bytes:
    """The 200 OK a registrar sends: the request's Via, From, To (with a tag), Call-ID, CSeq, Contact."""
    keep = (b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq", b"contact", b"m")
    lines = [b"SIP/2.0 200 OK"]
    for line in request.split(HEADER_END, 1)[0].split(b"\r\n")[1:]:
        name = line.partition(b":")[0].strip().lower()
        if name in keep:
            lines.append(line)
        elif name in (b"to", b"t"):
            lines.append(line if b";tag=" in line else line + b";tag=nfsiplab-tls")
    lines += [b"Server: nfsip-lab-tls", b"Content-Length: 0"]
    return b"\r\n".join(lines) + HEADER_END


def serve(ip: str, port: int, cert: str, key: str, log_path: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    log_lock = threading.Lock()

    def log(event: dict[str, object]) -> None:
        with log_lock, open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"ts": time.time(), **event}) + "\n")

    def handle(raw: socket.socket, peer: tuple[str, int]) -> None:
        who = {"peer_ip": peer[0], "peer_port": peer[1]}
        try:
            conn = context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log({"event": "handshake-failed", **who, "error": str(exc)})
            raw.close()
            return
        log({"event": "handshake", **who, "version": conn.version(), "cipher": conn.cipher()[0]})
        buffer = bytearray()
        try:
            while (message := read_message(conn, buffer)) is not None:
                reply = ok_response(message)
                conn.sendall(reply)
                log({"event": "message", **who, "message": message.decode("latin-1"), "reply": reply.decode("latin-1")})
        except (ssl.SSLError, OSError) as exc:
            log({"event": "error", **who, "error": str(exc)})
        finally:
            conn.close()
            log({"event": "closed", **who})

    with socket.socket(_family(ip), socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((ip, port))
        listener.listen(16)
        while True:
            raw, peer = listener.accept()
            threading.Thread(target=handle, args=(raw, peer[:2]), daemon=True).start()


def send(ip: str, port: int, cafile: str, message: bytes, local_ip: str, local_port: int, hold_s: float) -> dict:
    context = ssl.create_default_context(cafile=cafile)
    raw = socket.socket(_family(ip), socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    raw.bind((local_ip, local_port))
    raw.settimeout(10)
    raw.connect((ip, port))
    # server_hostname is the address: the certificate names the server by its IP addresses.
    with context.wrap_socket(raw, server_hostname=ip) as conn:
        summary = {"local": list(conn.getsockname()[:2]), "version": conn.version(), "cipher": conn.cipher()[0]}
        conn.sendall(message)
        reply = read_message(conn, bytearray())
        summary["reply"] = reply.decode("latin-1") if reply is not None else None
        time.sleep(hold_s)
    return summary


def main(argv: list[str]) -> int:
    if len(argv) == 6 and argv[0] == "serve":
        serve(argv[1], int(argv[2]), argv[3], argv[4], argv[5])
        return 0
    if len(argv) == 8 and argv[0] == "send":
        with open(argv[4], "rb") as f:
            message = f.read()
        summary = send(argv[1], int(argv[2]), argv[3], message, argv[5], int(argv[6]), float(argv[7]))
        print(json.dumps(summary))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
