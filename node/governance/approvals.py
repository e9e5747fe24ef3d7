"""The data steward's decisions on studies, bound to each study's content.

With ``approval = "manual"`` in the site policy a node answers a study only once its data steward
approved *that content*: a decision is keyed by the SHA-256 of the study's canonical bytes (what
the coordinator signed), never by the study id, so other content signed later under an approved
id waits for a new approval.

Layout (the folder and its subfolders 0700, every file 0600, written atomically)::

    <root>/pending/<sha256>.json    a study awaiting a decision: id, digest, canonical study,
                                    signer key id, received and expiry dates
    <root>/approved/<sha256>.json   the approval (id, digest, time)
    <root>/rejected/<sha256>.json   the rejection (id, digest, time, reason)

File names are validated digests (64 lowercase hex digits) and study ids must match the study
id pattern before anything is looked up, so no name can leave the folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import NodeError
from protocol.pki import write_private_file
from protocol.study import ID_PATTERN, Study, study_from_dict

__all__ = ["ApprovalError", "Approvals", "PendingStudy", "study_summary", "summary_lines"]

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_PREFIX = re.compile(r"^[0-9a-f]{6,64}$")


class ApprovalError(NodeError):
    """A study reference is invalid, unknown or ambiguous, or a decision cannot be stored."""


@dataclass(frozen=True)
class PendingStudy:
    """A study that awaits the data steward's decision at this node."""

    study_id: str
    digest: str
    canonical_study: str
    signer: str
    received_at: str
    expires: str

    def study(self) -> Study:
        """The study (verified when it was received)."""
        return study_from_dict(json.loads(self.canonical_study))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


def _check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ApprovalError(f"not a study digest: {digest!r}")
    return digest


def _check_id(study_id: str) -> str:
    if not isinstance(study_id, str) or not ID_PATTERN.match(study_id):
        raise ApprovalError(f"not a study id: {study_id!r} (ids match [a-z0-9][a-z0-9-]{{2,63}})")
    return study_id


class Approvals:
    """Pending studies and the steward's decisions under one node-owned folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- folders and files -----------------------------------------------------------------------

    def _dir(self, kind: str) -> Path:
        path = self.root / kind
        for folder in (self.root, path):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        return path

    def _file(self, kind: str, digest: str) -> Path:
        return self.root / kind / f"{_check_digest(digest)}.json"

    def _write(self, kind: str, digest: str, data: dict[str, Any]) -> Path:
        folder = self._dir(kind)
        target = folder / f"{_check_digest(digest)}.json"
        write_private_file(target, json.dumps(data, sort_keys=True, indent=1).encode())
        return target

    def _read(self, kind: str, digest: str) -> dict[str, Any] | None:
        path = self._file(kind, digest)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ApprovalError(f"cannot read {path}: {exc}") from None
        return data if isinstance(data, dict) else None

    # -- what the node engine asks -----------------------------------------------------------------

    def is_approved(self, digest: str) -> bool:
        """Whether the steward approved the study with this content digest."""
        return self._file("approved", digest).exists()

    def rejection(self, digest: str) -> str | None:
        """The steward's reason when the study with this digest was rejected, else ``None``."""
        data = self._read("rejected", digest)
        if data is None:
            return None
        return str(data.get("reason") or "no reason given")

    def is_pending(self, digest: str) -> bool:
        """Whether the study with this digest awaits a decision."""
        return self._file("pending", digest).exists()

    def add_pending(self, study: Study, canonical_study: bytes, digest: str, signer: str,
                    now: dt.datetime) -> bool:
        """Record a received study awaiting a decision; return whether it is new."""
        _check_id(study.id)
        if self.is_pending(digest):
            return False
        record = PendingStudy(study.id, _check_digest(digest),
                              canonical_study.decode("utf-8"), signer,
                              now.isoformat(timespec="seconds"), study.expires.isoformat())
        self._write("pending", digest, record.to_dict())
        return True

    # -- what the data steward does ----------------------------------------------------------------

    def pending(self) -> list[PendingStudy]:
        """Every study awaiting a decision, oldest first."""
        folder = self.root / "pending"
        if not folder.is_dir():
            return []
        out = []
        for path in folder.glob("*.json"):
            if not _DIGEST.match(path.stem):
                continue
            data = self._read("pending", path.stem)
            if data is None:
                continue
            try:
                out.append(PendingStudy(**{k: str(data[k]) for k in
                                           PendingStudy.__dataclass_fields__}))
            except KeyError as exc:
                raise ApprovalError(f"{path}: missing {exc}") from None
        return sorted(out, key=lambda p: (p.received_at, p.study_id, p.digest))

    def resolve(self, ref: str) -> PendingStudy:
        """The pending study named by ``ref``: its id, or a prefix (6+ hex digits) of its
        digest; it must name exactly one pending study."""
        if not isinstance(ref, str) or not (ID_PATTERN.match(ref) or _PREFIX.match(ref)):
            raise ApprovalError(f"not a study id or digest prefix: {ref!r}")
        pending = self.pending()
        matches = [p for p in pending if p.study_id == ref or p.digest.startswith(ref)]
        if not matches:
            raise ApprovalError(f"no pending study {ref!r} (heron node pending lists them)")
        if len(matches) > 1:
            raise ApprovalError(f"{ref!r} names {len(matches)} pending studies; give a digest "
                                "prefix: " + ", ".join(f"{p.study_id} {p.digest[:12]}"
                                                       for p in matches))
        return matches[0]

    def approve(self, ref: str, now: dt.datetime) -> PendingStudy:
        """Approve the pending study ``ref`` (this content only)."""
        item = self.resolve(ref)
        self._write("approved", item.digest, {"study_id": item.study_id, "digest": item.digest,
                                              "approved_at": now.isoformat(timespec="seconds")})
        self._file("pending", item.digest).unlink(missing_ok=True)
        return item

    def reject(self, ref: str, reason: str, now: dt.datetime) -> PendingStudy:
        """Reject the pending study ``ref``; the aggregator is told ``reason``."""
        item = self.resolve(ref)
        self._write("rejected", item.digest, {"study_id": item.study_id, "digest": item.digest,
                                              "rejected_at": now.isoformat(timespec="seconds"),
                                              "reason": reason})
        self._file("pending", item.digest).unlink(missing_ok=True)
        return item


def _filters(study: Study) -> dict[str, Any]:
    c = study.cohort
    out: dict[str, Any] = {}
    for name in ("atmp_class", "route", "origin", "product", "indication_group", "sex",
                 "disease_status"):
        value = getattr(c, name)
        if value is not None:
            out[name] = list(value)
    if c.infusion_date_from or c.infusion_date_to:
        out["infusion_date"] = [c.infusion_date_from.isoformat() if c.infusion_date_from
                                else None,
                                c.infusion_date_to.isoformat() if c.infusion_date_to else None]
    if c.age_min is not None or c.age_max is not None:
        out["age_at_infusion"] = [c.age_min, c.age_max]
    out["first_infusion_only"] = c.first_infusion_only
    return out


def study_summary(item: PendingStudy) -> dict[str, Any]:
    """What the node would release for a pending study, from the study alone (no site data)."""
    study = item.study()
    analyses = []
    for a in study.analyses:
        entry: dict[str, Any] = {"name": a.name, "kind": a.kind}
        for key in ("endpoint", "group_by"):
            if getattr(a, key) is not None:
                entry[key] = getattr(a, key)
        if a.covariates:
            entry["covariates"] = list(a.covariates)
        if a.terms:
            entry["ae_terms"] = list(a.terms)
        if a.stratify_by_site:
            entry["stratify_by_site"] = True
        analyses.append(entry)
    return {
        "study_id": study.id, "title": study.title, "digest": item.digest,
        "coordinator_key": item.signer, "received_at": item.received_at,
        "expires": study.expires.isoformat(), "horizon_days": study.horizon_days,
        "cohort": _filters(study),
        "censor_at": list(study.censor_at),
        "analyses": analyses,
        "privacy": {"secure_aggregation": study.privacy.secure_aggregation,
                    "min_sites": study.privacy.min_sites},
        # exactly what the approval binds: the canonical signed content (its SHA-256 is
        # ``digest``)
        "content": json.loads(item.canonical_study),
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """A readable form of :func:`study_summary`."""
    privacy = summary["privacy"]
    lines = [
        f"{summary['study_id']}  {summary['title']}",
        f"  digest:          {summary['digest']}",
        f"  signed by:       coordinator key {summary['coordinator_key']}",
        f"  received:        {summary['received_at']}   expires: {summary['expires']}",
        f"  privacy:         secure aggregation "
        f"{'on' if privacy['secure_aggregation'] else 'OFF (site vectors visible, coarsened)'}"
        f", min_sites {privacy['min_sites']}",
        f"  horizon:         {summary['horizon_days']} days"
        + (f", censored at {', '.join(summary['censor_at'])}" if summary["censor_at"] else ""),
        "  cohort:          " + "; ".join(
            f"{k} {v if not isinstance(v, list) else ', '.join(str(x) for x in v)}"
            for k, v in summary["cohort"].items()),
        "  analyses:",
    ]
    for a in summary["analyses"]:
        parts = [f"{a['name']} ({a['kind']})"]
        parts += [f"{k} {a[k]}" for k in ("endpoint", "group_by") if k in a]
        if "covariates" in a:
            parts.append("covariates " + ", ".join(a["covariates"]))
        if "ae_terms" in a:
            parts.append("AE terms " + ", ".join(a["ae_terms"]))
        if a.get("stratify_by_site"):
            parts.append("stratified by site")
        lines.append("    - " + "; ".join(parts))
    lines.append("  signed content (the approval binds exactly this; its SHA-256 is the "
                 "digest):")
    lines += ["    " + line for line in json.dumps(summary["content"], indent=2,
                                                   sort_keys=True).splitlines()]
    return lines
