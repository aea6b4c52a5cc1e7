"""Client drivers. Python ones are modules of interop.clients.python; the others are programs."""
