"""Drivers for the Python client libraries, sharing interop.clients.python.common."""
