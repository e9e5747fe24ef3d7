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

import numpy as np

from node.cox_site import cox_round_release, prepare_cox
from node.errors import StudyRefused
from node.policy import Policy
from node.secure_releases import cox_setup_vectors, secure_release
from node.secure_session import KEYS, REKEY, SecureSessions
from protocol.codec import Release
from protocol.study import Study

__all__ = ["MAX_ATTEMPTS", "secure_round"]

MAX_ATTEMPTS = 3
"""Key exchanges a site takes part in for one study (the first and two restarts)."""

logger = logging.getLogger(__name__)


def _first_data_round(study: Study, tables: object, cohort: Any, site_id: str,
                      policy: Policy, memo: dict[str, Any],
                      participants: Sequence[str]) -> list[Release]:
    out = []
    for analysis in study.analyses:
        reason = policy.check_analysis(analysis)
        if reason:
            out.append(Release.failure(analysis.name, analysis.kind, reason))
            continue
        try:
            if analysis.kind == "cox":
                site = prepare_cox(analysis, study, tables, cohort, policy)
                memo[analysis.name] = site
                out.append(cox_setup_vectors(analysis, site.design, int(np.sum(site.events))))
            else:
                out.append(secure_release(analysis, study, tables, cohort, site_id,
                                          participants))
        except StudyRefused as exc:
            out.append(Release.failure(analysis.name, analysis.kind, str(exc)))
    return out


def secure_round(study: Study, round: int, inputs: Sequence[Release], sessions: SecureSessions,
                 tables: object, cohort: Any, site_id: str, policy: Policy,
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
        releases = _first_data_round(study, tables, cohort, site_id, policy, memo,
                                     participants)
    else:
        releases = [cox_round_release(analyses[r.analysis], study, tables, cohort, policy,
                                      memo, r) for r in cox_inputs]
    return SecureSessions.mask(releases, masker, round)
