"""The runs worker: app lanes (quick, cold, promote). Concurrency = CCCI_MAX_TESTS.

It consumes ``runs`` and this node's ``runs.<node>`` (``CCCI_NODE``, R15) and is named
``runs.<node>@<host>``; its main process keeps the node in the node registry
(``ccci_tasks.nodebeat``). Prefetch is disabled so no lane step ages in Redis's unacked set
while another step runs.
"""

from ccci_tasks.config import get_settings
from ccci_tasks.constants import QUEUE_RUNS, runs_queue
from workers._common import Role, main, max_tests


def role() -> Role:
    """The shared ``runs`` queue and this node's own ``runs.<node>`` (R15)."""
    return Role(queue=QUEUE_RUNS, concurrency=max_tests(), disable_prefetch=True,
                also=(runs_queue(get_settings().node),))


if __name__ == "__main__":
    main(role)
