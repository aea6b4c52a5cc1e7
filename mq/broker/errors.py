"""Typed protocol errors. Raised where a rule is broken; `mq.amqp` turns them into
channel.close or connection.close in one place."""
from __future__ import annotations


class AMQPError(Exception):
    """An error with an AMQP reply code. Channel-level unless `connection_level` is set."""

    reply_code: int = 541
    name: str = "INTERNAL_ERROR"
    connection_level: bool = False

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    @property
    def reply_text(self) -> str:
        return f"{self.name} - {self.text}"


class ConnectionForced(AMQPError):
    reply_code, name, connection_level = 320, "CONNECTION_FORCED", True


class AccessRefused(AMQPError):
    reply_code, name = 403, "ACCESS_REFUSED"


class NotFound(AMQPError):
    reply_code, name = 404, "NOT_FOUND"


class ResourceLocked(AMQPError):
    reply_code, name = 405, "RESOURCE_LOCKED"


class PreconditionFailed(AMQPError):
    reply_code, name = 406, "PRECONDITION_FAILED"


class FrameError(AMQPError):
    reply_code, name, connection_level = 501, "FRAME_ERROR", True


class SyntaxError_(AMQPError):
    reply_code, name, connection_level = 502, "SYNTAX_ERROR", True


class CommandInvalid(AMQPError):
    reply_code, name, connection_level = 503, "COMMAND_INVALID", True


class ChannelError(AMQPError):
    reply_code, name, connection_level = 504, "CHANNEL_ERROR", True


class UnexpectedFrame(AMQPError):
    reply_code, name, connection_level = 505, "UNEXPECTED_FRAME", True


class NotAllowed(AMQPError):
    reply_code, name, connection_level = 530, "NOT_ALLOWED", True


class NotImplemented_(AMQPError):
    reply_code, name, connection_level = 540, "NOT_IMPLEMENTED", True


class InternalError(AMQPError):
    reply_code, name, connection_level = 541, "INTERNAL_ERROR", True
