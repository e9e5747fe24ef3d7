"""Aggregator configuration: TOML file, HERON_AGGREGATOR_* environment, flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.config import AggregatorConfig, load_config, resolve_config
from aggregator.errors import ConfigError

KEY_B64 = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aggregator.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_file_values_and_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, f"""
credentials_dir = "creds"
db_path = "/var/lib/heron/agg.sqlite"
trusted_coordinators = ["keys/ecc.pub", "{KEY_B64}"]
site_timeout_s = 600
""")
    config = load_config(path)
    assert config == AggregatorConfig(
        credentials_dir=tmp_path.resolve() / "creds", db_path=Path("/var/lib/heron/agg.sqlite"),
        trusted_coordinators=(str(tmp_path.resolve() / "keys/ecc.pub"), KEY_B64),
        site_timeout_s=600.0)
    assert (config.listen, config.heartbeat_interval_s) == ("127.0.0.1:50051", 5)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, 'credentials_dir = "c"\ndb_path = "d"\nsite_timeout = 5\n')
    with pytest.raises(ConfigError, match="unknown key 'site_timeout'"):
        load_config(path)


def test_bad_values_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="heartbeat_interval_s"):
        load_config(_write(tmp_path, 'credentials_dir = "c"\ndb_path = "d"\n'
                                     'heartbeat_interval_s = "often"\n'))
    with pytest.raises(ConfigError, match="listen"):
        load_config(_write(tmp_path, 'credentials_dir = "c"\ndb_path = "d"\nlisten = "x"\n'))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "credentials_dir = \n"))


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = _write(tmp_path, 'credentials_dir = "c"\ndb_path = "d"\nsite_timeout_s = 10\n'
                            'listen = "0.0.0.0:1"\n')
    env = {"HERON_AGGREGATOR_SITE_TIMEOUT_S": "20", "HERON_AGGREGATOR_LISTEN": "0.0.0.0:2",
           "HERON_AGGREGATOR_TRUSTED_COORDINATORS": f"{KEY_B64}, /k/other.pub",
           "UNRELATED": "x"}
    config = resolve_config(path, env, {"listen": "127.0.0.1:0", "site_timeout_s": None})
    assert config.listen == "127.0.0.1:0"  # flag
    assert config.site_timeout_s == 20.0  # environment (the flag was not given)
    assert config.trusted_coordinators == (KEY_B64, "/k/other.pub")
    assert config.db_path == tmp_path.resolve() / "d"  # file
    assert config.heartbeat_interval_s == 5  # default


def test_unknown_environment_variable_and_missing_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HERON_AGGREGATOR_DB"):
        resolve_config(None, {"HERON_AGGREGATOR_DB": "x"}, {})
    with pytest.raises(ConfigError, match="credentials_dir: required"):
        resolve_config(None, {}, {"db_path": "x"})
