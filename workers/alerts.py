"""The side-queue worker: everything short that must never wait behind a run's step.

Alert relays to the operators' push targets, forge triggers and commit statuses, and the
entry tasks that check and queue runs (``quick_run``, ``cold_run``, ...). Concurrency 1.
"""

from ccci_tasks.constants import QUEUE_ALERTS
from workers._common import Role, main


def role() -> Role:
    return Role(queue=QUEUE_ALERTS, concurrency=1)


if __name__ == "__main__":
    main(role)
