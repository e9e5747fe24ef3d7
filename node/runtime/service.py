"""Assemble a site node from its configuration: init, ingest, status, run.

These are the typed library functions behind ``heron node ...``; the CLI only parses flags.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from node.errors import NodeError, StoreError
from node.governance.approvals import Approvals, PendingStudy, study_summary
from node.governance.audit import AuditTrail, verify_audit
from node.governance.ledger import DisclosureLedger, load_or_create_salt
from node.governance.policy import Policy, default_policy, load_policy, write_policy
from node.ingestion.ingest import IngestReport, ingest
from node.ingestion.pseudonym import load_or_create_secret
from node.ingestion.store import open_store
from node.runtime.config import NodeConfig, write_config
from node.runtime.daemon import NodeDaemon
from node.runtime.engine import NodeEngine
from protocol.keys import load_public_key
from protocol.pki import load_credentials

__all__ = [
    "NodeStatus",
    "approvals",
    "approve_study",
    "build_daemon",
    "build_engine",
    "ingest_site",
    "init_node",
    "node_status",
    "pending_studies",
    "reject_study",
]

logger = logging.getLogger(__name__)


def init_node(config: NodeConfig, trusted: tuple[str, ...] = (),
              policy: Policy | None = None) -> NodeConfig:
    """Create a node folder: ``node.toml``, a default ``policy.toml`` and the site secret."""
    config.node_dir.mkdir(parents=True, exist_ok=True)
    write_config(config)
    policy_path = config.path("policy_file")
    if not policy_path.exists():
        base = policy or default_policy()
        if trusted:
            base = replace(base, trusted_coordinators=tuple(trusted))
        write_policy(policy_path, base)
    load_or_create_secret(config.path("secret_file"))
    AuditTrail(config.path("audit_file")).append("node_initialised", None,
                                                 site_id=config.site_id)
    return config


def ingest_site(config: NodeConfig, source: Path, progress: Any = None) -> IngestReport:
    """Validate and load a site data folder into the node's Parquet store."""
    secret = load_or_create_secret(config.path("secret_file"))
    # with the ledger salt the snapshot holds the ledger digests of every infusion, so the
    # first study after an ingestion does not compute them
    report = ingest(source, config.path("store_dir"), secret, progress=progress,
                    ledger_salt=load_or_create_salt(config.node_dir / "ledger.salt"))
    stored = {t: c.stored for t, c in report.tables.items()} if hasattr(report, "tables") else {}
    # the entry names the snapshot it made current: verify_audit(..., store_dir) then detects a
    # snapshot that a crash left without its entry
    AuditTrail(config.path("audit_file")).append("ingest", None, ok=report.ok, stored=stored,
                                                 snapshot=getattr(report, "snapshot", None))
    return report


def _trusted_keys(policy: Policy, base_dir: Path) -> list[Any]:
    keys = []
    for value in policy.trusted_coordinators:
        try:
            keys.append(load_public_key(value, base_dir))
        except Exception as exc:
            raise NodeError(f"policy trusted_coordinators: cannot read key {value!r}: {exc}") \
                from None
    return keys


def build_engine(config: NodeConfig, today: Any = dt.date.today) -> NodeEngine:
    """The node's study engine with its policy, trusted keys, store and audit trail."""
    policy_path = config.path("policy_file")
    policy = load_policy(policy_path)
    audit = AuditTrail(config.path("audit_file"))
    audit.append("policy_loaded", None, policy=policy.to_dict())
    credentials_dir = config.path("credentials_dir")
    return NodeEngine(
        site_id=config.site_id,
        policy=policy,
        trusted_keys=_trusted_keys(policy, policy_path.parent),
        open_tables=lambda: open_store(config.path("store_dir")),
        audit=audit,
        today=today,
        approvals=approvals(config),
        credentials=load_credentials(credentials_dir) if credentials_dir.exists() else None,
        ledger=DisclosureLedger(config.node_dir / "ledger",
                                load_or_create_salt(config.node_dir / "ledger.salt")),
        secure_state=config.node_dir / "secure-sessions.json",
    )


def approvals(config: NodeConfig) -> Approvals:
    """The node's pending studies and the data steward's decisions (``approvals_dir``)."""
    return Approvals(config.path("approvals_dir"))


def pending_studies(config: NodeConfig) -> list[dict[str, Any]]:
    """Summaries of the studies awaiting the data steward (what each would release; no
    patient data)."""
    return [study_summary(p) for p in approvals(config).pending()]


def approve_study(config: NodeConfig, ref: str) -> PendingStudy:
    """Approve a pending study (for ``approval = "manual"``): ``ref`` is its id or a digest
    prefix naming one pending study. The approval binds that study's content digest."""
    item = approvals(config).approve(ref, dt.datetime.now(dt.UTC))
    AuditTrail(config.path("audit_file")).append("study_approved", item.study_id,
                                                 study_sha256=item.digest)
    return item


def reject_study(config: NodeConfig, ref: str, reason: str = "") -> PendingStudy:
    """Reject a pending study; the node refuses it with ``reason`` from now on."""
    reason = " ".join(reason.split())[:500] or "no reason given"
    item = approvals(config).reject(ref, reason, dt.datetime.now(dt.UTC))
    AuditTrail(config.path("audit_file")).append("study_rejected", item.study_id,
                                                 study_sha256=item.digest, reason=reason)
    return item


def _freshness(config: NodeConfig) -> tuple[str, int]:
    try:
        store = open_store(config.path("store_dir"))
    except StoreError:
        return "", 0
    return store.ingested_at, int(store.stored_rows("infusions"))


def build_daemon(config: NodeConfig) -> NodeDaemon:
    """The daemon that links this node to its aggregator."""
    engine = build_engine(config)
    return NodeDaemon(
        site_id=config.site_id,
        target=config.aggregator,
        credentials=load_credentials(config.path("credentials_dir")),
        answer=engine.answer,
        # the hello says how fresh the data are, not how many patients the site has
        freshness=lambda: _freshness(config)[0],
        heartbeat_s=config.heartbeat_s,
        backoff_max_s=config.backoff_max_s,
        max_message_bytes=config.max_message_bytes,
    )


@dataclass(frozen=True)
class NodeStatus:
    """What ``heron node status`` shows: configuration, store and audit state, no patient data."""

    site_id: str
    aggregator: str
    ingested_at: str
    stored_infusions: int
    audit_entries: int
    audit_ok: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


def node_status(config: NodeConfig) -> NodeStatus:
    """Read the node's state."""
    ingested_at, stored = _freshness(config)
    audit_path = config.path("audit_file")
    report = verify_audit(audit_path, store_dir=config.path("store_dir")) \
        if audit_path.exists() else None
    return NodeStatus(
        site_id=config.site_id,
        aggregator=config.aggregator,
        ingested_at=ingested_at,
        stored_infusions=stored,
        audit_entries=report.entries if report else 0,
        audit_ok=report.ok if report else True,
    )
