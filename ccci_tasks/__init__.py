"""ccci-tasks: the task-queue engine behind a CI service for Co-op Cloud recipes."""

__version__ = "0.1.0"
