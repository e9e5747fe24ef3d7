"""The running node: the engine that answers rounds, the daemon that dials out, the service."""

from node.runtime.config import NodeConfig
from node.runtime.daemon import NodeDaemon
from node.runtime.engine import NodeEngine, TaskOutcome

__all__ = ["NodeConfig", "NodeDaemon", "NodeEngine", "TaskOutcome"]
