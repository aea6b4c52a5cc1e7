"""Interop suite: the same AMQP scenarios run through many real client libraries.

See README.md. Entry point: ``python -m interop``.
"""
