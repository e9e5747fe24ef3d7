"""A site's "awaiting approval" answer, shared by the node and the aggregator.

With ``approval = "manual"`` a node answers a study its data steward has not approved yet
(approvals bind the study's content digest, see :mod:`node.governance.approvals`) with exactly
one release named :data:`AWAITING`: no vectors, the study's SHA-256 in its metadata. It travels
as an ordinary task result, so the wire format is unchanged. The aggregator does not count it
as an answer or a refusal: the site's task stays open, its state reads "awaiting approval", and
the task is sent again from time to time until the site answers, refuses (the steward rejected
the study, with a reason) or the study expires.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.codec import Release

__all__ = ["AWAITING", "AWAITING_KIND", "awaiting_digest", "awaiting_release"]

AWAITING = "__awaiting_approval__"
"""Analysis name of the awaiting-approval answer."""
AWAITING_KIND = "awaiting_approval"
_REASON = "awaiting approval by the site's data steward"


def awaiting_release(study_sha256: str) -> Release:
    """The release a node sends while the study with this digest awaits approval."""
    return Release(AWAITING, AWAITING_KIND, {}, {"study_sha256": study_sha256}, _REASON)


def awaiting_digest(releases: Sequence[Release] | None) -> str | None:
    """The study digest when ``releases`` is an awaiting-approval answer, else ``None``."""
    if releases is None or len(releases) != 1 or releases[0].analysis != AWAITING:
        return None
    return str(releases[0].metadata.get("study_sha256", ""))
