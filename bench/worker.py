"""The runs worker as the bench starts it: ``python -m bench.worker [celery args]``.

With ``CCCI_BENCH_FINISH=kill`` the quick lane's last step stops the canonical without a
graceful stop (``undeploy(domain, graceful=False)``) before it restores the known-good data,
which is what the lane does once it switches; nothing else changes. Without it, this is
exactly ``python -m workers.runs``.
"""

from __future__ import annotations

import os

from ccci_tasks.lanes import steps
from ccci_tasks.state import warmsnap


def finish_quick_without_grace(env: steps.StepEnv, ctx: steps.RunCtx) -> str:
    """PASS: kill and undeploy (the data is restored next), restore the known-good data."""
    env.platform.undeploy(ctx.domain, graceful=False)
    warmsnap.restore(env.platform, env.settings.state_dir, ctx.recipe, ctx.domain)
    return f"{ctx.domain} undeployed (killed), known-good data restored, volumes kept"


if __name__ == "__main__":
    if os.environ.get("CCCI_BENCH_FINISH") == "kill":
        steps.STEPS["finish_quick"] = finish_quick_without_grace
    from workers._common import main
    from workers.runs import role

    main(role())
