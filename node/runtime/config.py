"""Node configuration: ``node.toml`` in the node folder, read into a frozen dataclass.

Precedence is flag > environment (``HERON_NODE_<FIELD>``) > file > default, as in uvicorn.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import NodeError
from protocol.tls import MAX_MESSAGE_BYTES

__all__ = ["CONFIG_FILE", "NodeConfig", "resolve_config", "write_config"]

CONFIG_FILE = "node.toml"
ENV_PREFIX = "HERON_NODE_"


class ConfigError(NodeError):
    """The node configuration is invalid; the message names the key."""


@dataclass(frozen=True)
class NodeConfig:
    """Where a node finds its aggregator, credentials, store, policy, audit trail and secret.

    Relative paths are resolved against ``node_dir``. ``max_message_bytes`` is the largest
    message the node sends or receives (the aggregator may announce a lower one); an answer
    above it is refused with the sizes as reason instead of being sent.
    """

    node_dir: Path
    site_id: str = ""
    aggregator: str = "localhost:50051"
    credentials_dir: Path = Path("credentials")
    store_dir: Path = Path("store")
    policy_file: Path = Path("policy.toml")
    audit_file: Path = Path("audit.jsonl")
    secret_file: Path = Path("secret.key")
    approvals_dir: Path = Path("approvals")
    heartbeat_s: float = 5.0
    backoff_max_s: float = 30.0
    max_message_bytes: int = MAX_MESSAGE_BYTES

    def path(self, field: str) -> Path:
        """Absolute path of a path field."""
        value = Path(getattr(self, field))
        return value if value.is_absolute() else self.node_dir / value


_PATH_FIELDS = {f.name for f in dataclasses.fields(NodeConfig) if f.type in ("Path", Path)}
_FLOAT_FIELDS = {"heartbeat_s", "backoff_max_s"}
_INT_FIELDS = {"max_message_bytes"}
_FILE_KEYS = {f.name for f in dataclasses.fields(NodeConfig)} - {"node_dir"}


def _coerce(key: str, value: Any, source: str) -> Any:
    if key in _PATH_FIELDS:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{source}: {key} must be a path string")
        return Path(value)
    if key in _INT_FIELDS:
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {key} must be a whole number") from None
        if not 4096 <= number <= 2**31 - 1:
            raise ConfigError(f"{source}: {key} must be between 4096 and 2147483647")
        return number
    if key in _FLOAT_FIELDS:
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {key} must be a number") from None
        if out <= 0:
            raise ConfigError(f"{source}: {key} must be positive")
        return out
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {key} must be a string")
    return value


def _read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}")
    return {k: _coerce(k, v, str(path)) for k, v in data.items()}


def resolve_config(
    node_dir: Path,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NodeConfig:
    """Build the node configuration: flag > environment > ``node.toml`` > default."""
    env = os.environ if env is None else env
    values = _read_file(node_dir / CONFIG_FILE)
    for key in _FILE_KEYS:
        name = ENV_PREFIX + key.upper()
        if name in env:
            values[key] = _coerce(key, env[name], f"environment {name}")
    for key, value in (overrides or {}).items():
        if key not in _FILE_KEYS:
            raise ConfigError(f"unknown setting {key!r}")
        if value is not None:
            values[key] = _coerce(key, value, f"--{key.replace('_', '-')}")
    config = NodeConfig(node_dir=node_dir.resolve(), **values)
    if not config.site_id:
        raise ConfigError(f"{node_dir / CONFIG_FILE}: site_id is not set")
    return config


def write_config(config: NodeConfig) -> Path:
    """Write ``node.toml`` with every non-default setting of ``config``."""
    lines = ["# heron node configuration", ""]
    for f in dataclasses.fields(NodeConfig):
        if f.name == "node_dir":
            continue
        value = getattr(config, f.name)
        if isinstance(value, float | int):
            lines.append(f"{f.name} = {value}")
        else:
            text = str(value).replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{f.name} = "{text}"')
    path = config.node_dir / CONFIG_FILE
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
