"""One module per worker role: ``python -m workers.runs|infra|alerts``; ``workers.bridge``
serves the forge webhooks."""
