"""Events: a transactional outbox (CloudEvents 1.0) and a relay to Dapr, Redis Streams or the log."""

from todo_api.events.outbox import Outbox, task_changed, task_created, task_deleted, user_signed_up

__all__ = ["Outbox", "task_changed", "task_created", "task_deleted", "user_signed_up"]
