"""Aggregator configuration: a TOML file, ``HERON_AGGREGATOR_*`` variables and flags.

Precedence is flag > environment > file > default (:func:`resolve_config`). Unknown keys in
the file and unknown ``HERON_AGGREGATOR_*`` variables are errors that name the key. Relative
paths in a file are relative to the file's folder. Example::

    listen = "0.0.0.0:50051"
    credentials_dir = "aggregator-credentials"   # cert.pem, key.pem, ca.pem
    db_path = "aggregator.sqlite"
    trusted_coordinators = ["coordinator.pub"]   # Ed25519 public keys (paths or base64)
    site_timeout_s = 600
    heartbeat_interval_s = 5
    hello_timeout_s = 10          # a node stream that sends no Hello in time is closed
    max_node_streams = 1024       # node streams served at once (sites and their reconnects)
    service_threads = 8           # threads doing the coordinator API's database work
    max_message_bytes = 67108864  # the transport limit (64 MiB), told to nodes in Welcome
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.errors import ConfigError
from protocol.tls import MAX_MESSAGE_BYTES

__all__ = ["ENV_PREFIX", "AggregatorConfig", "load_config", "read_config_file", "resolve_config"]

logger = logging.getLogger(__name__)

ENV_PREFIX = "HERON_AGGREGATOR_"
_PATH_KEYS = ("credentials_dir", "db_path")
_SECONDS_KEYS = ("site_timeout_s", "hello_timeout_s")
_COUNT_KEYS = ("heartbeat_interval_s", "max_node_streams", "service_threads",
               "max_message_bytes")
_MIN_MESSAGE_BYTES = 4096


@dataclass(frozen=True, kw_only=True)
class AggregatorConfig:
    """Settings of the aggregator daemon.

    ``listen`` is ``host:port`` (port 0 picks a free port); ``credentials_dir`` holds the
    aggregator's ``cert.pem``, ``key.pem`` and ``ca.pem``; ``trusted_coordinators`` lists the
    Ed25519 public keys (``.pub`` paths or base64) whose study signatures are accepted; when
    it is empty the aggregator does not check signatures (the nodes always do).

    Keeping the aggregator up (see :mod:`aggregator.server`): ``hello_timeout_s`` bounds how
    long a node stream may stay silent before its ``Hello``; at most ``max_node_streams`` node
    streams are served at once (two per site certificate), as coroutines of one event loop
    holding no thread; ``service_threads`` threads do the coordinator API's database work;
    ``max_message_bytes`` is the largest gRPC message
    either side accepts, told to nodes in ``Welcome`` so they refuse a larger release with a
    reason instead of sending it.
    """

    listen: str = "127.0.0.1:50051"
    credentials_dir: Path
    db_path: Path
    trusted_coordinators: tuple[str, ...] = ()
    site_timeout_s: float = 60.0
    heartbeat_interval_s: int = 5
    hello_timeout_s: float = 10.0
    max_node_streams: int = 1024
    service_threads: int = 8
    max_message_bytes: int = MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"listen: {self.listen!r} is not host:port")
        if self.site_timeout_s <= 0:
            raise ConfigError("site_timeout_s: must be positive")
        if self.heartbeat_interval_s < 1:
            raise ConfigError("heartbeat_interval_s: must be at least 1")
        if self.hello_timeout_s <= 0:
            raise ConfigError("hello_timeout_s: must be positive")
        if self.max_node_streams < 1:
            raise ConfigError("max_node_streams: must be at least 1")
        if self.service_threads < 2:
            raise ConfigError("service_threads: must be at least 2 (coordinator and health)")
        if self.max_message_bytes < _MIN_MESSAGE_BYTES:
            raise ConfigError(f"max_message_bytes: must be at least {_MIN_MESSAGE_BYTES}")
        if self.max_message_bytes > 2**31 - 1:
            raise ConfigError("max_message_bytes: gRPC accepts at most 2147483647")


_FIELDS = {f.name: f for f in dataclasses.fields(AggregatorConfig)}


def _coerce(key: str, value: Any, base_dir: Path | None) -> Any:
    """Check and convert one raw value (TOML, environment string or flag) for ``key``."""
    try:
        if key == "listen":
            if not isinstance(value, str):
                raise TypeError("must be a string host:port")
            return value
        if key in _PATH_KEYS:
            if not isinstance(value, str | Path) or not str(value):
                raise TypeError("must be a path")
            path = Path(value).expanduser()
            return base_dir / path if base_dir is not None and not path.is_absolute() else path
        if key == "trusted_coordinators":
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise TypeError("must be a list of public keys (paths or base64)")
            if base_dir is None:
                return tuple(value)
            return tuple(str(base_dir / v) if _looks_like_relative_path(v) else v
                         for v in value)
        if key in _SECONDS_KEYS:
            if isinstance(value, bool):
                raise TypeError("must be a number of seconds")
            return float(value)
        if key in _COUNT_KEYS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError("must be a whole number")
            return int(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from exc
    raise ConfigError(f"{key}: unknown key")


def _looks_like_relative_path(value: str) -> bool:
    """True for a relative file path, false for an inline key (as protocol.keys reads them)."""
    text = value.strip()
    if text.startswith("-----BEGIN") or Path(text).is_absolute():
        return False
    if len(text) == 44:
        try:
            return len(base64.b64decode(text, validate=True)) != 32
        except (binascii.Error, ValueError):
            return True
    return True


def read_config_file(path: Path) -> dict[str, Any]:
    """Read and check a TOML config file; return its settings (paths made absolute).

    Raises
    ------
    ConfigError
        If the file is unreadable, not TOML, or has an unknown key or a bad value.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    base = path.parent.resolve()
    out = {}
    for key, value in raw.items():
        if key not in _FIELDS:
            raise ConfigError(f"{path}: unknown key {key!r}")
        out[key] = _coerce(key, value, base)
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key not in _FIELDS:
            raise ConfigError(f"unknown environment variable {name}")
        out[key] = _coerce(key, value, None)
    return out


def resolve_config(file: Path | None = None, env: Mapping[str, str] | None = None,
                   overrides: Mapping[str, Any] | None = None) -> AggregatorConfig:
    """Merge defaults < file < environment < overrides (flags; ``None`` values are ignored).

    Parameters
    ----------
    file
        TOML config file, or ``None``.
    env
        Environment (``os.environ`` when ``None``); only ``HERON_AGGREGATOR_*`` is read.
    overrides
        Command-line values by key.

    Raises
    ------
    ConfigError
        Naming the first unknown key, bad value or missing required setting.
    """
    merged: dict[str, Any] = {}
    if file is not None:
        merged.update(read_config_file(file))
    merged.update(_from_env(os.environ if env is None else env))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in _FIELDS:
            raise ConfigError(f"unknown setting {key!r}")
        merged[key] = _coerce(key, value, None)
    missing = [k for k, f in _FIELDS.items() if k not in merged
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{missing[0]}: required setting missing (file, "
                          f"{ENV_PREFIX}{missing[0].upper()} or flag)")
    return AggregatorConfig(**merged)


def load_config(path: Path) -> AggregatorConfig:
    """The configuration in a TOML file alone (defaults for keys it leaves out)."""
    return resolve_config(path, env={}, overrides=None)
