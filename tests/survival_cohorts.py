"""Cohorts shared by the analytics tests: public datasets shipped with lifelines, and synthetic.

Each cohort holds integer times (rounded up to whole days/weeks/months/years, identically for
the federated side and the reference side), event indicators, a grouping variable and the
horizon of the study. ``split_sites`` assigns individuals to 2-10 sites at random (seeded).
``tests/test_analytics_cohorts.py`` checks the cohorts cover the cases the other tests rely on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
from lifelines import datasets

from analytics import SurvivalCounts, survival_counts


@dataclass(frozen=True)
class Cohort:
    """Individual-level data: integer times, 0/1 events, group labels, study horizon."""

    name: str
    time: np.ndarray
    event: np.ndarray
    group: np.ndarray
    horizon: int

    def truncated(self) -> tuple[np.ndarray, np.ndarray]:
        """Times and events after administrative censoring at the horizon (the reference
        side's own truncation: later times become censorings on the horizon day)."""
        beyond = self.time > self.horizon
        return np.minimum(self.time, self.horizon), np.where(beyond, 0, self.event)


def _ints(values: pd.Series) -> np.ndarray:
    return np.ceil(values.to_numpy(dtype=float)).astype(np.int64)


def _synthetic(seed: int) -> Cohort:
    """Three arms with heavy ties, day-0 events and an all-censored arm."""
    rng = np.random.default_rng(seed)
    n = 240
    group = rng.choice(np.array(["a", "b", "c"]), size=n, p=[0.45, 0.45, 0.10])
    time = np.floor(rng.exponential(np.where(group == "a", 200.0, 350.0))).astype(np.int64)
    time[rng.random(n) < 0.05] = 0  # day-0 events and censorings
    event = (rng.random(n) < 0.7).astype(np.int64)
    event[group == "c"] = 0  # a group whose members are all censored
    return Cohort("synthetic", time, event, group, horizon=400)


@cache
def cohort(name: str) -> Cohort:
    """Load one named cohort."""
    if name == "waltons":
        df = datasets.load_waltons()
        return Cohort(name, _ints(df["T"]), df["E"].to_numpy(), df["group"].to_numpy(), 75)
    if name == "rossi":  # weeks; horizon 40 truncates follow-up (max 52)
        df = datasets.load_rossi()
        group = np.where(df["fin"] == 1, "aid", "no_aid")
        return Cohort(name, _ints(df["week"]), df["arrest"].to_numpy(), group, 40)
    if name == "larynx":  # years with one decimal -> months, rounded up
        df = datasets.load_larynx()
        stage = 1 + df["Stage_II"] + 2 * df["Stage_III"] + 3 * df["Stage_IV"]
        group = np.array([f"stage_{s}" for s in stage])
        return Cohort(name, _ints(df["time"] * 12), df["death"].to_numpy(), group, 130)
    if name == "lung":  # days
        df = datasets.load_lung()
        group = np.where(df["sex"] == 1, "male", "female")
        return Cohort(name, _ints(df["time"]), df["status"].to_numpy(), group, 1022)
    if name == "gbsg2":  # days; horizon 1826 truncates (max 2659)
        df = datasets.load_gbsg2()
        group = df["tgrade"].astype(str).to_numpy()
        return Cohort(name, _ints(df["time"]), df["cens"].to_numpy(), group, 1826)
    if name == "dd":  # years, heavy ties, six regimes
        df = datasets.load_dd()
        group = df["regime"].astype(str).to_numpy()
        return Cohort(name, _ints(df["duration"]), df["observed"].to_numpy(), group, 47)
    if name == "kidney":  # days; horizon 2000 truncates (max 3434)
        df = datasets.load_kidney_transplant()
        group = np.select(
            [df["black_male"] == 1, df["white_male"] == 1, df["black_female"] == 1],
            ["black_male", "white_male", "black_female"],
            "white_female",
        )
        return Cohort(name, _ints(df["time"]), df["death"].to_numpy(), group, 2000)
    if name == "synthetic":
        return _synthetic(20260101)
    raise KeyError(name)


COHORTS = ("waltons", "rossi", "larynx", "lung", "gbsg2", "dd", "kidney", "synthetic")
SEEDS = (1, 2, 3)


def split_sites(n: int, seed: int) -> np.ndarray:
    """Random site index (0..k-1) per individual, with k drawn from 2..10."""
    rng = np.random.default_rng(seed)
    n_sites = int(rng.integers(2, 11))
    return rng.integers(0, n_sites, size=n)


def site_counts(
    c: Cohort, site: np.ndarray, mask: np.ndarray | None = None
) -> list[SurvivalCounts]:
    """Per-site counts (from untruncated times: the sites apply the horizon themselves)."""
    mask = np.ones(c.time.size, dtype=bool) if mask is None else mask
    return [
        survival_counts(c.time[mask & (site == s)], c.event[mask & (site == s)], c.horizon)
        for s in np.unique(site)
    ]
