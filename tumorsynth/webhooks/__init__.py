"""Signed job webhooks: the target check, Standard Webhooks signatures, a Redis outbox and the delivery loop."""
