"""Cox cohorts and pooled-data references shared by the Cox tests.

Public datasets shipped with lifelines (rossi, gbsg2, larynx, kidney) and a synthetic cohort,
each with integer times, covariates and a horizon; ``pooled_fn`` / ``stratified_fn`` evaluate
the federated statistics on random site splits. ``TIGHT`` tightens lifelines' stopping rule so
its fits reach the maximum (see ``tests/test_analytics_cox.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
from lifelines import datasets

from analytics import (
    CoxDayStats,
    CoxDerivatives,
    cox_day_stats,
    efron_derivatives,
    site_derivatives,
)

TOL = {"rtol": 1e-6, "atol": 1e-9}
TIGHT = {"precision": 1e-14, "r_precision": 1e-14}
SEEDS = (1, 2, 3)


@dataclass(frozen=True)
class CoxCohort:
    """Integer durations, 0/1 events, named covariates and the study horizon."""

    name: str
    time: np.ndarray
    event: np.ndarray
    X: np.ndarray
    names: tuple[str, ...]
    horizon: int

    def frame(self, site: np.ndarray | None = None) -> pd.DataFrame:
        """Reference data for lifelines: follow-up censored at the horizon, as sites do."""
        beyond = self.time > self.horizon
        df = pd.DataFrame(self.X, columns=list(self.names))
        df["T"] = np.minimum(self.time, self.horizon)
        df["E"] = np.where(beyond, 0, self.event)
        if site is not None:
            df["site"] = site
        return df


def _indicators(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Indicator columns against the first sorted level (the study's categorical coding)."""
    levels = sorted(df[column].astype(str).unique())
    return pd.DataFrame(
        {f"{column}_{lv}": (df[column].astype(str) == lv).astype(float) for lv in levels[1:]}
    )


def _synthetic(seed: int) -> CoxCohort:
    """Few distinct days (heavy ties), day-0 events, binary/ordinal/continuous covariates."""
    rng = np.random.default_rng(seed)
    n = 400
    treated = rng.integers(0, 2, n).astype(float)
    ecog = rng.integers(0, 4, n).astype(float)
    ldh = rng.lognormal(5.5, 0.5, n)
    rate = np.exp(-3.0 + 0.5 * treated + 0.3 * ecog + 0.002 * ldh)
    time = np.floor(rng.exponential(1.0 / rate) / 4.0).astype(np.int64)
    event = (rng.random(n) < 0.75).astype(np.int64)
    X = np.column_stack([treated, ecog, ldh])
    return CoxCohort("synthetic", time, event, X, ("treated", "ecog", "lab:LDH"), 30)


@cache
def cox_cohort(name: str) -> CoxCohort:
    """One named cohort with covariates."""
    if name == "rossi":  # weeks; horizon 40 truncates (max 52)
        df = datasets.load_rossi()
        names = ("fin", "age", "race", "wexp", "mar", "paro", "prio")
        X = df[list(names)].to_numpy(float)
        return CoxCohort(name, df["week"].to_numpy(), df["arrest"].to_numpy(), X, names, 40)
    if name == "gbsg2":  # days; horizon 1826 truncates (max 2659)
        df = datasets.load_gbsg2()
        cov = pd.concat(
            [df[["age", "tsize", "pnodes", "progrec", "estrec"]].astype(float)]
            + [_indicators(df, c) for c in ("horTh", "menostat", "tgrade")],
            axis=1,
        )
        return CoxCohort(
            name,
            df["time"].to_numpy(np.int64),
            df["cens"].to_numpy(),
            cov.to_numpy(),
            tuple(cov.columns),
            1826,
        )
    if name == "larynx":  # years with one decimal -> months, rounded up
        df = datasets.load_larynx()
        names = ("age", "Stage_II", "Stage_III", "Stage_IV")
        time = np.ceil(df["time"].to_numpy() * 12).astype(np.int64)
        return CoxCohort(
            name, time, df["death"].to_numpy(), df[list(names)].to_numpy(float), names, 130
        )
    if name == "kidney":  # days; horizon 2000 truncates (max 3434)
        df = datasets.load_kidney_transplant()
        names = ("age", "black_male", "white_male", "black_female")
        return CoxCohort(
            name,
            df["time"].to_numpy(np.int64),
            df["death"].to_numpy(),
            df[list(names)].to_numpy(float),
            names,
            2000,
        )
    if name == "synthetic":
        return _synthetic(20260101)
    raise KeyError(name)


COHORTS = ("rossi", "gbsg2", "larynx", "kidney", "synthetic")


def pooled_fn(c: CoxCohort, site: np.ndarray, centre: bool = True):
    """``beta -> pooled derivatives``: each site's day sums, added as flat vectors.

    With ``centre`` every site subtracts the same covariate means, read off the pooled
    ``beta = 0`` statistics (``s1[0] / s0[0]``), as the aggregator does to keep uncentred
    covariates from overflowing.
    """
    parts = [site == s for s in np.unique(site)]
    p = c.X.shape[1]

    def pooled(beta: np.ndarray, means: np.ndarray | None) -> CoxDayStats:
        vectors = [
            cox_day_stats(c.time[m], c.event[m], c.X[m], beta, c.horizon, means).to_vectors()
            for m in parts
        ]
        with np.errstate(over="ignore"):  # an overflowing sum is refused by from_vectors
            summed = {k: sum(v[k] for v in vectors) for k in vectors[0]}
        return CoxDayStats.from_vectors(summed, c.horizon, p)

    null = pooled(np.zeros(p), None)
    means = null.s1[0] / null.s0[0] if centre else None

    def derivatives(beta: np.ndarray) -> CoxDerivatives:
        return efron_derivatives(pooled(beta, means))

    return derivatives


def stratified_fn(c: CoxCohort, site: np.ndarray):
    """``beta -> sum of per-site derivatives`` (a baseline hazard per site)."""
    parts = [site == s for s in np.unique(site)]

    def derivatives(beta: np.ndarray) -> CoxDerivatives:
        return sum(site_derivatives(c.time[m], c.event[m], c.X[m], beta, c.horizon) for m in parts)

    return derivatives


def assert_binned_cox_equals_lifelines(got: dict, stores: dict, study, covariates: list[str],
                                       strata: str = "none") -> None:
    """A secure Cox result (results.json entry) equals lifelines ``CoxPHFitter`` (Efron ties)
    on the pooled complete cases with durations rounded up to the result's ``bins``, to 1e-6
    (``strata=["site"]`` for a baseline hazard per site)."""
    from analytics import round_up_to_bins
    from tests.conftest import lifelines_reference, pooled_frame

    assert "error" not in got, got
    data = pooled_frame(stores, study, covariates)
    data["duration"] = round_up_to_bins(np.minimum(data["duration"], study.horizon_days),
                                        tuple(got["bins"]))
    categorical = [c for c in covariates if c in ("sex", "route", "origin", "disease_status",
                                                  "atmp_class")]
    ref = lifelines_reference(data, categorical, ["site"] if strata == "site" else None)
    assert got["n"] == len(data) and got["events"] == int(data["event"].sum())
    assert set(got["coefficients"]) == set(ref.summary.index)
    for name, row in ref.summary.iterrows():
        assert abs(got["coefficients"][name]["coef"] - row["coef"]) <= 1e-6, name
        assert abs(got["coefficients"][name]["se"] - row["se(coef)"]) <= 1e-6, name
    assert abs(got["log_likelihood"] - ref.log_likelihood_) <= 1e-6
