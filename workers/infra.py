"""The infra worker: warm reconcile, realm reap, prune, sweep. Concurrency 1."""

from ccci_tasks.constants import QUEUE_INFRA
from workers._common import Role, main


def role() -> Role:
    return Role(queue=QUEUE_INFRA, concurrency=1)


if __name__ == "__main__":
    main(role)
