"""The runs worker: app lanes (quick, cold, promote). Concurrency = CCCI_MAX_TESTS.

Prefetch is disabled so no lane step ages in Redis's unacked set while another step runs.
"""

from ccci_tasks.constants import QUEUE_RUNS
from workers._common import Role, main, max_tests


def role() -> Role:
    return Role(queue=QUEUE_RUNS, concurrency=max_tests(), disable_prefetch=True)


if __name__ == "__main__":
    main(role())
