"""What a site releases: one path per analysis kind, unmasked or fixed-shape for masking.

Modules: :mod:`.survival` (kaplan_meier, nelson_aalen, logrank), :mod:`.competing`
(cumulative_incidence), :mod:`.adverse_events`, :mod:`.cox`; :mod:`.groups` holds the per-group
counts the first two share; :mod:`.dispatch` the entry points re-exported here.
"""

from node.releases.dispatch import cox_step_release, first_release, release_summary

__all__ = ["cox_step_release", "first_release", "release_summary"]
