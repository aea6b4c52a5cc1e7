"""A bare AMQP client over a socket, for tests that must send exact (or broken) bytes and
see exactly what the broker answers."""
from __future__ import annotations

import socket
import struct
import time
from typing import Any

from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp.header import ContentHeader
from pamqp.body import ContentBody

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


class RawClient:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_method(self, channel: int, method: Any) -> None:
        self.send(pamqp_frame.marshal(method, channel))

    def send_content(self, channel: int, body: bytes, properties: Any = None,
                     frame_max: int = 131072) -> None:
        header = ContentHeader(0, len(body), properties or spec.Basic.Properties())
        self.send(pamqp_frame.marshal(header, channel))
        step = frame_max - 8
        for i in range(0, len(body), step):
            self.send(pamqp_frame.marshal(ContentBody(body[i:i + step]), channel))

    def send_frame(self, ftype: int, channel: int, payload: bytes) -> None:
        """One frame with exactly this payload (e.g. a hand-built content header)."""
        self.send(struct.pack(">BHI", ftype, channel, len(payload)) + payload + b"\xce")

    def recv_raw(self, timeout: float = 5.0) -> tuple[int, int, bytes]:
        """The next frame undecoded, as (type, channel, payload)."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 7:
                ftype, channel, size = struct.unpack(">BHI", self.buf[:7])
                if len(self.buf) >= size + 8:
                    payload, self.buf = self.buf[7:7 + size], self.buf[size + 8:]
                    return ftype, channel, payload
            self._fill(deadline)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no frame from the broker")
        self.sock.settimeout(remaining)
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("socket closed by the broker")
        self.buf += data

    def recv_frame(self, timeout: float = 5.0) -> tuple[int, Any]:
        """The next frame as (channel, pamqp object); raises ConnectionError on EOF."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 7:
                size = struct.unpack(">I", self.buf[3:7])[0]
                if len(self.buf) >= size + 8:
                    used, channel, value = pamqp_frame.unmarshal(self.buf[:size + 8])
                    self.buf = self.buf[used:]
                    return channel, value
            self._fill(deadline)

    def recv_method(self, timeout: float = 5.0) -> tuple[int, Any]:
        """The next frame that is not a heartbeat."""
        while True:
            channel, value = self.recv_frame(timeout)
            if value.name != "Heartbeat":
                return channel, value

    def expect(self, name: str, timeout: float = 5.0) -> Any:
        channel, value = self.recv_method(timeout)
        assert value.name == name, f"expected {name}, got {value!r}"
        return value

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the broker closes the socket (EOF) within the timeout."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        return False

    def login(self, user: str = "guest", password: str = "guest",
              client_properties: dict | None = None, mechanism: str = "PLAIN",
              response: str | None = None) -> None:
        """Protocol header, connection.start, then start-ok with these credentials."""
        self.send(PROTOCOL_HEADER)
        self.expect("Connection.Start")
        self.send_method(0, spec.Connection.StartOk(
            client_properties={} if client_properties is None else client_properties,
            mechanism=mechanism,
            response=f"\0{user}\0{password}" if response is None else response))

    def handshake(self, user: str = "guest", password: str = "guest", vhost: str = "/",
                  heartbeat: int = 0, frame_max: int = 131072,
                  capabilities: dict | None = None) -> None:
        self.login(user, password, {"capabilities": capabilities if capabilities is not None
                                    else {"authentication_failure_close": True,
                                          "consumer_cancel_notify": True}})
        tune = self.expect("Connection.Tune")
        self.send_method(0, spec.Connection.TuneOk(channel_max=tune.channel_max,
                                                   frame_max=frame_max, heartbeat=heartbeat))
        self.send_method(0, spec.Connection.Open(virtual_host=vhost))
        self.expect("Connection.OpenOk")

    def open_channel(self, channel: int = 1) -> None:
        self.send_method(channel, spec.Channel.Open())
        self.expect("Channel.OpenOk")

    def close(self) -> None:
        self.sock.close()
