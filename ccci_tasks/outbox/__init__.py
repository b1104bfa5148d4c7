"""The one durable outbox mechanism: alerts and forge messages alike.

A message is first written under the state root (``state.outbox``: one atomic file per
message, a queue per stream, a key written once), then the alerts queue is asked to deliver
its stream (``relay.publish``). The relay (``relay.deliver``, run by the outbox's delivery
task) sends a stream's messages in order, each exactly once, and the task retries with the
one backoff (``ccci_tasks.backoff``); beat's sweep (``relay.sweep``) asks again for whatever
is still pending. An ``Outbox`` (``model``) declares what is particular to one: its files,
its sender, its Redis keys, its task. The two outboxes: ``outbox.alerts`` (R4, Apprise
targets) and ``forge.relay`` (commit statuses, PR comments, finish notifications).
"""

from ccci_tasks.outbox.model import Outbox, Sender
from ccci_tasks.outbox.relay import StreamResult, SweepResult, deliver, publish, sweep

__all__ = ["Outbox", "Sender", "StreamResult", "SweepResult", "deliver", "publish", "sweep"]
