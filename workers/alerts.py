"""The alerts worker: relays alert files to the operators' push targets. Concurrency 1."""

from ccci_tasks.constants import QUEUE_ALERTS
from workers._common import Role, main


def role() -> Role:
    return Role(queue=QUEUE_ALERTS, concurrency=1)


if __name__ == "__main__":
    main(role())
