"""heron aggregator: site nodes dial in over mutual-TLS gRPC; studies fan out, releases pool.

Modules: :mod:`aggregator.server` (daemon wiring), :mod:`aggregator.engine` (study state
machine), :mod:`aggregator.store` (SQLite), :mod:`aggregator.transport` (transport abstraction
and in-process transport), :mod:`aggregator.link` (gRPC node link),
:mod:`aggregator.coordinator_api` (coordinator service), :mod:`aggregator.config`.
"""
