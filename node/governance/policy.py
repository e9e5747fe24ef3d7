"""The site policy: which studies and analyses a node answers, and its disclosure thresholds.

A node reads its policy from a TOML file (docs/study-format.md, "Site policy file"). Keys
left out take the defaults; unknown keys and bad values are errors that name the key and the
file, so a typo can never loosen a site's rules silently.

Entries of ``trusted_coordinators`` are either paths to public-key files (relative paths are
resolved against the folder of the policy file) or base64 of a raw 32-byte Ed25519 public key.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import fnmatch
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import PolicyError
from protocol.study import ANALYSIS_KINDS, Analysis
from protocol.vocabulary import GROUP_BY

__all__ = [
    "APPROVAL_MODES",
    "DEFAULT_COVARIATES",
    "Policy",
    "default_policy",
    "load_policy",
    "policy_from_dict",
    "policy_to_toml",
    "write_policy",
]

log = logging.getLogger(__name__)

APPROVAL_MODES = ("auto", "manual")
DEFAULT_COVARIATES = (
    "age_at_infusion",
    "sex",
    "ecog",
    "prior_lines",
    "disease_status",
    "route",
    "origin",
    "lab:*",
)
_THRESHOLDS = ("min_cohort", "min_cell", "min_bin_events", "min_cohort_difference")
_ED25519_KEY_BYTES = 32


def _raw_key(entry: str) -> bytes | None:
    """Decode ``entry`` as base64 of a raw Ed25519 public key, or None if it is not one."""
    try:
        raw = base64.b64decode(entry, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == _ED25519_KEY_BYTES else None


@dataclass(frozen=True)
class Policy:
    """A site's policy (docs/study-format.md, "Site policy file").

    ``base_dir`` is the folder of the policy file, used to resolve relative key paths; it is
    not part of equality and not written to the file.
    """

    approval: str = "auto"
    trusted_coordinators: tuple[str, ...] = ()
    allowed_kinds: tuple[str, ...] = ANALYSIS_KINDS
    allowed_group_by: tuple[str, ...] = GROUP_BY
    allowed_covariates: tuple[str, ...] = DEFAULT_COVARIATES
    min_cohort: int = 10
    min_cell: int = 5
    min_bin_events: int = 5
    min_cohort_difference: int = 5
    site_level_release: bool = False
    base_dir: Path | None = field(default=None, compare=False)

    def with_trusted(self, *keys: str) -> Policy:
        """A copy that also trusts ``keys`` (paths or base64 raw keys); duplicates are dropped."""
        merged = tuple(dict.fromkeys((*self.trusted_coordinators, *keys)))
        return dataclasses.replace(self, trusted_coordinators=merged)

    def kind_allowed(self, kind: str) -> bool:
        """Whether analyses of ``kind`` may run at this site."""
        return kind in self.allowed_kinds

    def group_by_allowed(self, group_by: str | None) -> bool:
        """Whether results may be grouped by ``group_by`` (no grouping is always allowed)."""
        return group_by is None or group_by in self.allowed_group_by

    def covariate_allowed(self, name: str) -> bool:
        """Whether covariate ``name`` matches one of the allowed glob patterns (e.g. ``lab:*``)."""
        return any(fnmatch.fnmatchcase(name, pat) for pat in self.allowed_covariates)

    def check_analysis(self, analysis: Analysis) -> str | None:
        """The reason this policy refuses ``analysis``, or None when it is allowed."""
        if not self.kind_allowed(analysis.kind):
            return (f"analysis {analysis.name!r}: kind {analysis.kind!r} is not allowed by the "
                    "site policy")
        if not self.group_by_allowed(analysis.group_by):
            return (f"analysis {analysis.name!r}: grouping by {analysis.group_by!r} is not "
                    "allowed by the site policy")
        for cov in analysis.covariates:
            if not self.covariate_allowed(cov):
                return (f"analysis {analysis.name!r}: covariate {cov!r} is not allowed by the "
                        "site policy")
        return None

    def trusted_key_sources(self) -> tuple[bytes | Path, ...]:
        """Each trusted coordinator entry as raw key bytes or as a resolved key-file path."""
        out: list[bytes | Path] = []
        for entry in self.trusted_coordinators:
            raw = _raw_key(entry)
            if raw is not None:
                out.append(raw)
                continue
            path = Path(entry).expanduser()
            if not path.is_absolute() and self.base_dir is not None:
                path = self.base_dir / path
            out.append(path)
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        """The policy as a JSON-ready dict (for audit records); ``base_dir`` is left out."""
        return {
            "approval": self.approval,
            "trusted_coordinators": list(self.trusted_coordinators),
            "allowed_kinds": list(self.allowed_kinds),
            "allowed_group_by": list(self.allowed_group_by),
            "allowed_covariates": list(self.allowed_covariates),
            "min_cohort": self.min_cohort,
            "min_cell": self.min_cell,
            "min_bin_events": self.min_bin_events,
            "min_cohort_difference": self.min_cohort_difference,
            "site_level_release": self.site_level_release,
        }


def default_policy() -> Policy:
    """The default policy (docs/study-format.md: auto approval, no trusted coordinator yet)."""
    return Policy()


def _str_list(value: Any, key: str, where: str,
              choices: tuple[str, ...] | None = None) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise PolicyError(f"{where}: {key} must be a list of strings")
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise PolicyError(f"{where}: {key}[{i}] must be a non-empty string")
        if choices is not None and item not in choices:
            raise PolicyError(f"{where}: {key}[{i}] {item!r} is not one of {', '.join(choices)}")
        out.append(item)
    return tuple(dict.fromkeys(out))


def policy_from_dict(obj: Mapping[str, Any], source: str = "<policy>",
                     base_dir: Path | None = None) -> Policy:
    """Validate a decoded policy document; missing keys take their defaults.

    Raises
    ------
    PolicyError
        On an unknown key or a bad type or value; the message names ``source`` and the key.
    """
    if not isinstance(obj, Mapping):
        raise PolicyError(f"{source}: policy must be a table of keys")
    known = {f.name for f in dataclasses.fields(Policy)} - {"base_dir"}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise PolicyError(f"{source}: unknown key {unknown[0]!r}")
    kwargs: dict[str, Any] = {}
    if "approval" in obj:
        value = obj["approval"]
        if value not in APPROVAL_MODES:
            raise PolicyError(f"{source}: approval must be \"auto\" or \"manual\", "
                              f"not {value!r}")
        kwargs["approval"] = value
    if "trusted_coordinators" in obj:
        kwargs["trusted_coordinators"] = _str_list(obj["trusted_coordinators"],
                                                   "trusted_coordinators", source)
    if "allowed_kinds" in obj:
        kwargs["allowed_kinds"] = _str_list(obj["allowed_kinds"], "allowed_kinds", source,
                                            ANALYSIS_KINDS)
    if "allowed_group_by" in obj:
        kwargs["allowed_group_by"] = _str_list(obj["allowed_group_by"], "allowed_group_by",
                                               source, GROUP_BY)
    if "allowed_covariates" in obj:
        kwargs["allowed_covariates"] = _str_list(obj["allowed_covariates"],
                                                 "allowed_covariates", source)
    if "site_level_release" in obj:
        if not isinstance(obj["site_level_release"], bool):
            raise PolicyError(f"{source}: site_level_release must be true or false, not "
                              f"{obj['site_level_release']!r}")
        kwargs["site_level_release"] = obj["site_level_release"]
    for key in _THRESHOLDS:
        if key in obj:
            value = obj[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PolicyError(f"{source}: {key} must be an integer >= 1, not {value!r}")
            kwargs[key] = value
    return Policy(base_dir=base_dir, **kwargs)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a policy TOML file.

    Raises
    ------
    PolicyError
        When the file cannot be read, is not TOML, or holds an unknown key or a bad value.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            obj = tomllib.load(fh)
    except OSError as exc:
        raise PolicyError(f"{p}: cannot read policy file: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{p}: not valid TOML: {exc}") from exc
    policy = policy_from_dict(obj, str(p), p.resolve().parent)
    log.info("loaded site policy from %s (approval=%s)", p, policy.approval)
    return policy


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(_toml_str(i) for i in items) + "]"


def policy_to_toml(policy: Policy) -> str:
    """The policy as a commented TOML document that :func:`load_policy` reads back equal."""
    return "\n".join([
        "# heron site policy (docs/study-format.md, \"Site policy file\").",
        "# Keys left out take their defaults; unknown keys are errors.",
        "",
        "# auto: answer allowed studies at once; manual: a data steward approves each study.",
        f"approval = {_toml_str(policy.approval)}",
        "",
        "# Coordinator Ed25519 public keys: file paths (relative to this file's folder)",
        "# or base64 of the raw 32-byte key.",
        f"trusted_coordinators = {_toml_list(policy.trusted_coordinators)}",
        "",
        f"allowed_kinds = {_toml_list(policy.allowed_kinds)}",
        f"allowed_group_by = {_toml_list(policy.allowed_group_by)}",
        "# Glob patterns, e.g. \"lab:*\" allows every baseline laboratory value.",
        f"allowed_covariates = {_toml_list(policy.allowed_covariates)}",
        "",
        "# Disclosure thresholds for unmasked releases (secure aggregation off).",
        "# Fewest cohort patients for any unmasked release.",
        f"min_cohort = {policy.min_cohort}",
        "# Smallest non-zero count released unmasked.",
        f"min_cell = {policy.min_cell}",
        "# Events per time bin in unmasked event tables.",
        f"min_bin_events = {policy.min_bin_events}",
        "",
        "# Disclosure ledger: refuse a cohort that differs from one released before by 1 to",
        "# min_cohort_difference - 1 patients (differencing attack); applies to every study.",
        f"min_cohort_difference = {policy.min_cohort_difference}",
        "",
        "# Under secure aggregation, a grouping that singles out this site's own data",
        "# (group_by: site) is refused unless this is true; then this site's group is",
        "# released under the unmasked rules above.",
        f"site_level_release = {'true' if policy.site_level_release else 'false'}",
        "",
    ])


def write_policy(path: str | os.PathLike[str], policy: Policy) -> Path:
    """Write ``policy`` as TOML to ``path`` (atomically) and return the path."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(policy_to_toml(policy), encoding="utf-8")
    os.replace(tmp, p)
    log.info("wrote site policy to %s", p)
    return p
