"""What the site allows and what it keeps: policy, disclosure ledger, audit trail."""

from node.governance.audit import AuditTrail, verify_audit
from node.governance.ledger import DisclosureLedger
from node.governance.policy import Policy, default_policy, load_policy

__all__ = ["AuditTrail", "DisclosureLedger", "Policy", "default_policy", "load_policy",
           "verify_audit"]
