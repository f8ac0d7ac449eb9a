"""Shared state: one interface per kind, an embedded implementation and a shared one.

- connection leases, rate budgets, throttling backoff, warm-up counts: `limits.Limits`; on one
  node `limits.LocalLimits` (memory; warm-up counts in a file), in a cluster `redis.RedisLimits`
  (which also writes the node heartbeats);
- the suppression list (hard bounces, complaints, unsubscribes): `suppression.Suppression`; on one
  node `suppression.LocalSuppression` (SQLite), in a cluster `postgres.PgSuppression`.

`cluster.SharedState` picks the implementations from `cluster:` in the config; the delivery,
portal and ingress code only ever sees the interfaces. A Redis or PostgreSQL error is mapped here
into `StateUnavailable` (or handled here, for limits, by falling back to a local share), so no
backend's exception leaves this package.
"""
