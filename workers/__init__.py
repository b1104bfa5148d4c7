"""One module per worker role: ``python -m workers.runs|infra|alerts``."""
