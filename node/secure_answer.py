"""How the node answers the rounds of a study under secure aggregation.

Round 1 announces a key; a ``__rekey__`` input announces one for a new attempt; a ``__keys__``
input opens a data round: the first one releases every non-iterative analysis and each Cox
model's description, later ones (carrying Cox coefficients) release the Cox sums. Every vector
is masked; an analysis this site cannot answer goes back as an unmasked error release (it
carries no vectors).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from node.cohort import TableSource
from node.errors import StudyRefused
from node.policy import Policy
from node.releases import cox_step_release, first_release
from node.secure_session import KEYS, REKEY, SecureSessions
from protocol.codec import Release
from protocol.errors import ProtocolError
from protocol.rounds import newton_from_release
from protocol.study import Analysis, Study

__all__ = ["MAX_ATTEMPTS", "cox_round", "secure_round"]

MAX_ATTEMPTS = 3
"""Key exchanges a site takes part in for one study (the first and two restarts)."""

logger = logging.getLogger(__name__)


def cox_round(analysis: Analysis, study: Study, tables: TableSource, cohort: Any,
              policy: Policy, memo: dict[str, Any], inputs: Release) -> Release:
    """A Cox Newton round from its input release (the coefficients to evaluate)."""
    try:
        request = newton_from_release(inputs)
    except ProtocolError as exc:
        return Release.failure(analysis.name, analysis.kind, str(exc))
    return cox_step_release(analysis, study, tables, cohort, policy, memo, request)


def secure_round(study: Study, round: int, inputs: Sequence[Release], sessions: SecureSessions,
                 tables: TableSource, cohort: Any, site_id: str, policy: Policy,
                 memo: dict[str, Any], record: Callable[[], None]) -> list[Release]:
    """The releases of one round of a secure study (see the module docstring).

    ``record`` is called before the first data release (the disclosure ledger).

    Raises
    ------
    StudyRefused
        When the round cannot be answered (bad announcements, lost key); the study is
        refused for this round.
    """
    by_name = {r.analysis: r for r in inputs}
    if KEYS not in by_name:
        attempt = int(by_name[REKEY].metadata.get("attempt", 1)) if REKEY in by_name else 1
        if attempt > MAX_ATTEMPTS:
            # each restart without a site hands the aggregator another sum; a few restarts are
            # dropouts, many look like an attempt to isolate sites (docs/threat-model.md)
            raise StudyRefused(f"more than {MAX_ATTEMPTS} key exchanges for one study")
        return [sessions.announce(study.id, attempt)]
    masker, participants = sessions.masker(study.id, by_name[KEYS])
    analyses = {a.name: a for a in study.analyses}
    cox_inputs = [r for r in inputs if r.analysis in analyses]
    if not cox_inputs:
        record()
        releases = [first_release(a, study, tables, cohort, site_id, policy, memo, participants)
                    for a in study.analyses]
    else:
        releases = [cox_round(analyses[r.analysis], study, tables, cohort, policy, memo, r)
                    for r in cox_inputs]
    return SecureSessions.mask(releases, masker, round)
