"""Run the aggregator daemon from its configuration (the library call behind the CLI)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from aggregator.config import resolve_config
from aggregator.server import AggregatorServer, serve

__all__ = ["run_aggregator"]

logger = logging.getLogger(__name__)


def _write_port(port_file: Path, port: int) -> None:
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(f"{port}\n", encoding="utf-8")
    os.replace(tmp, port_file)


def run_aggregator(config_file: Path | None, overrides: dict[str, Any],
                   port_file: Path | None = None) -> int:
    """Resolve the configuration (flag > environment > file > default) and serve until SIGTERM.

    Parameters
    ----------
    config_file
        Aggregator TOML file, or ``None``.
    overrides
        Values given as flags (``None`` means not given).
    port_file
        When given, the bound port is written there once the server is serving.
    """
    config = resolve_config(config_file, overrides=overrides)

    def _started(server: AggregatorServer) -> None:
        if port_file is not None:
            _write_port(port_file, server.port)

    return serve(config, on_started=_started)
