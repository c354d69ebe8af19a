"""A bare D-Bus client over one socket, for attack tests.

Unlike sd-bus, it keeps working on a connection after fork(): the child of
the process that authenticated can send calls on the inherited socket,
which is how a caller makes its connection outlive (or change) the process
the bus daemon recorded.

    sock = connect("/tmp/x/bus")            # AUTH EXTERNAL + Hello
    send_connect(sock, 2, "127.0.0.1", 9)   # org.tapsec1.Manager.Connect
    kind, error_name, body = read_reply(sock, 2)
"""

import os
import socket
import struct

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4


def _pad(buf, n):
    buf += b"\0" * ((-len(buf)) % n)


def _string(buf, text, code="s"):
    data = text.encode()
    if code == "g":
        buf += bytes([len(data)]) + data + b"\0"
    else:
        _pad(buf, 4)
        buf += struct.pack("<I", len(data)) + data + b"\0"


def method_call(serial, destination, path, interface, member, signature="", body=b""):
    fields = bytearray()
    for code, kind, value in ((1, "o", path), (2, "s", interface), (3, "s", member),
                              (6, "s", destination), (8, "g", signature)):
        if kind == "g" and not value:
            continue
        _pad(fields, 8)
        fields += bytes([code]) + b"\x01" + kind.encode() + b"\0"
        _string(fields, value, kind)
    message = bytearray(struct.pack("<cBBBII", b"l", METHOD_CALL, 0, 1, len(body), serial))
    message += struct.pack("<I", len(fields)) + fields
    _pad(message, 8)
    return bytes(message + body)


def connect(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(b"\0AUTH EXTERNAL " + str(os.geteuid()).encode().hex().encode() + b"\r\n")
    line = b""
    while not line.endswith(b"\r\n"):
        line += sock.recv(1)
    if not line.startswith(b"OK"):
        raise RuntimeError("bus refused authentication: %r" % line)
    sock.sendall(b"BEGIN\r\n")
    sock.sendall(method_call(1, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                             "org.freedesktop.DBus", "Hello"))
    kind, error, _ = read_reply(sock, 1)
    if kind != METHOD_RETURN:
        raise RuntimeError("Hello failed: %s" % error)
    return sock


def send_connect(sock, serial, host, port):
    """org.tapsec1.Manager.Connect(host, port, {}) with no properties."""
    body = bytearray()
    _string(body, host)
    _pad(body, 2)
    body += struct.pack("<H", port)
    _pad(body, 4)
    body += struct.pack("<I", 0)  # an empty a{sv}: its length, then padding to 8
    _pad(body, 8)
    sock.sendall(method_call(serial, "org.tapsec1", "/org/tapsec1", "org.tapsec1.Manager", "Connect",
                             "sqa{sv}", bytes(body)))


def _read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RuntimeError("bus closed the connection")
        data += chunk
    return data


def read_reply(sock, serial):
    """(message type, error name or "", body) of the reply to `serial`."""
    while True:
        fixed = _read_exact(sock, 16)
        kind = fixed[1]
        body_length, _, fields_length = struct.unpack("<III", fixed[4:16])
        fields = _read_exact(sock, fields_length + ((-fields_length) % 8))
        body = _read_exact(sock, body_length)
        error_name, reply_serial, offset = "", None, 0
        while offset < fields_length:
            offset += (-offset) % 8
            code, sig_length = fields[offset], fields[offset + 1]
            kind_code = chr(fields[offset + 2])
            offset += 3 + sig_length
            if kind_code in "so":
                offset += (-(offset + 16)) % 4
                (length,) = struct.unpack("<I", fields[offset:offset + 4])
                value = fields[offset + 4:offset + 4 + length].decode()
                offset += 4 + length + 1
                if code == 4:
                    error_name = value
            elif kind_code == "g":
                offset += 1 + fields[offset] + 1
            elif kind_code == "u":
                offset += (-(offset + 16)) % 4
                (value,) = struct.unpack("<I", fields[offset:offset + 4])
                offset += 4
                if code == 5:
                    reply_serial = value
            else:
                raise RuntimeError("unexpected header field type %r" % kind_code)
        if reply_serial == serial and kind in (METHOD_RETURN, ERROR):
            return kind, error_name, body
