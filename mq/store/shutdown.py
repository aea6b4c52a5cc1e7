"""Whether the last run of the store ended cleanly.

A clean close writes a marker file as its last step; open takes it away (durably) before
anything else is written, so after a crash it is missing. After a crash the log may lack the
record that a message was delivered (DLV records are written after the delivery goes out, in
the next group commit), so recovery marks every message redelivered: "may have been delivered
before", as RabbitMQ 3.10 does after an unclean shutdown (B-DUR-2). After a clean close the
flags are exact.
"""
from __future__ import annotations

import os

from mq.store.segments import sync_dir

MARKER = "clean-shutdown"


def take_clean_marker(directory: str) -> bool:
    """Whether the last run closed cleanly; from now on the answer is no until close."""
    path = os.path.join(directory, MARKER)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    sync_dir(directory)
    return True


def leave_clean_marker(directory: str) -> None:
    """The last step of a clean close: everything is on disk."""
    path = os.path.join(directory, MARKER)
    with open(path, "wb") as fh:
        os.fsync(fh.fileno())
    sync_dir(directory)
