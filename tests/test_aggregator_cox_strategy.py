"""The Cox strategy on hand-made site descriptions: the design follows the model's sites."""

from __future__ import annotations

import datetime as dt

import numpy as np

from aggregator.strategies import CoxStrategy
from aggregator.strategy import Contributions
from analytics import cox_day_stats
from heron.simulation import make_study
from protocol.codec import Release

COX = {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
       "covariates": ["age_at_infusion", "sex"]}


def _setup(levels: list[str], n: int, events: int, missing_age: int) -> Release:
    return Release("cox", "cox", {}, {"levels": {"sex": levels}, "n": n, "events": events,
                                      "dropped": {"missing age_at_infusion": missing_age},
                                      "time_resolution_days": 1})


def test_a_fit_restarted_without_a_site_uses_only_the_remaining_sites_design() -> None:
    study = make_study("cox-restart", [COX], min_sites=2,
                       expires=dt.date.today() + dt.timedelta(days=30))
    analysis = study.analyses[0]
    strategy = CoxStrategy()
    state = strategy.start(analysis, study, ("a", "b", "c"))
    # only site a has men: with a, sex=M is a column; without it, sex does not vary
    strategy.combine(state, analysis, study, Contributions({
        "a": _setup(["F", "M"], 40, 10, 7), "b": _setup(["F"], 30, 8, 0),
        "c": _setup(["F"], 20, 5, 1)}, sites=("a", "b", "c")))
    assert (state.columns, state.n, state.events) == (["age_at_infusion", "sex=M"], 90, 23)
    assert state.dropped == {"missing age_at_infusion": 8}
    assert strategy.request(state, "a") is not None
    # site a fails the first Newton round, b and c answer: the fit starts again over b and c
    sums = {site: Release("cox", "cox", cox_day_stats(
        np.array([5, 9, 12]), np.array([True, False, True]), np.array([[60.0, 1.0]] * 3),
        np.zeros(2), study.horizon_days).to_vectors(), {}) for site in ("b", "c")}
    strategy.combine(state, analysis, study, Contributions(
        sums, failures={"a": "no answer"}, sites=("b", "c")))
    assert (state.sites, state.columns, state.n, state.events) == (
        ["b", "c"], ["age_at_infusion"], 50, 13)
    assert state.dropped == {"missing age_at_infusion": 1}
    assert state.restarts == 1 and state.phase == "running" and not state.error
    assert strategy.request(state, "a") is None
    request = strategy.request(state, "b")
    assert request is not None and list(request.vectors["beta"]) == [0.0]
    assert state.site_errors == {"a": "no answer"}
