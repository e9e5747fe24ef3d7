"""heron aggregator: site nodes dial in over mutual-TLS gRPC; studies run as rounds of tasks.

Modules, from the core out: :mod:`aggregator.strategy` (what every analysis kind implements)
and :mod:`aggregator.strategies` (one strategy per kind); :mod:`aggregator.run` (the pure round
loop of a study, secure aggregation included); :mod:`aggregator.results` (results.json);
:mod:`aggregator.engine` (the study engine: persistence, tasks, timeouts);
:mod:`aggregator.store` (SQLite); :mod:`aggregator.transport` (the transport interface and the
in-process transport); :mod:`aggregator.link` (the gRPC node link),
:mod:`aggregator.coordinator_api`, :mod:`aggregator.peers` and :mod:`aggregator.status_codes`
(the coordinator service, caller roles, domain errors to gRPC statuses);
:mod:`aggregator.server`, :mod:`aggregator.service` and :mod:`aggregator.config` (the daemon);
:mod:`aggregator.inspect` (everything the database gives about a study, for an audit).
"""

from aggregator.engine import StudyEngine, StudyStatus
from aggregator.inspect import StudyInspection, inspect_study
from aggregator.run import RunState, StudyRun
from aggregator.store import Store
from aggregator.strategies import default_strategies
from aggregator.strategy import Contributions, Strategy
from aggregator.transport import LocalTransport, NodeTransport, StudyTask, TaskReply

__all__ = ["Contributions", "LocalTransport", "NodeTransport", "RunState", "Store", "Strategy",
           "StudyEngine", "StudyInspection", "StudyRun", "StudyStatus", "StudyTask", "TaskReply",
           "default_strategies", "inspect_study"]
