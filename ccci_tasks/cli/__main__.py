"""``python -m ccci_tasks.cli``: the ``ccci`` command."""

from ccci_tasks.cli import entry

entry()
