"""Events: a transactional outbox (CloudEvents 1.0) and a relay to Dapr, Redis Streams or the log."""

from todo_api.events.outbox import Outbox

__all__ = ["Outbox"]
