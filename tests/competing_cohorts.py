"""Competing-risks cohorts shared by the cumulative-incidence, Gray and disclosure tests.

Public datasets with a cause of failure, plus a synthetic cohort with heavy ties. Times are
integer days (rounded up identically for the federated and the reference side); causes are
0 = censored, 1 = event of interest, 2 = competing event.

- ``bmt``: scikit-survival ``load_bmt`` (35 leukaemia transplants; days; 1 = relapse,
  2 = transplant-related death), grouped by disease.
- ``bmtcrr``: the 177 transplants of Scrucca, Santucci and Aversa (2010), "Regression modeling
  of competing risk using R: an in depth guide for clinicians", Bone Marrow Transplant
  45:1388-1395 (R package casebase ``bmtcrr``; CSV as published with the paper). Months with two
  decimals; here ``ceil(months * 30.4375)`` days. 1 = relapse, 2 = transplant-related death;
  grouped by D (ALL / AML). The exact times (hundredths of a month) serve the Gray reference.
- ``cgvhd``: scikit-survival ``load_cgvhd`` (100 transplants; years -> days; 1 = chronic GVHD,
  2 = relapse or death first), grouped by diagnosis.
- ``flchain``: scikit-survival ``load_flchain`` (7874 residents; days; 1 = circulatory death,
  2 = any other death), grouped by sex, horizon 1826 (truncates).
- ``synthetic``: 600 subjects, times on a coarse grid (heavy ties, day-0 events of both causes),
  three groups.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
from sksurv.datasets import load_bmt, load_cgvhd, load_flchain

from analytics import CompetingCounts, competing_counts

BMTCRR_CSV = """\
ftime,Status,Sex,D,Phase,Age,Source
0.67,2,M,ALL,Relapse,48,BM+PB
9.5,1,F,AML,CR2,23,BM+PB
131.77,0,M,ALL,CR3,7,BM+PB
24.03,2,F,ALL,CR2,26,BM+PB
1.47,2,F,ALL,CR2,36,BM+PB
2.23,2,M,ALL,Relapse,17,BM+PB
124.83,0,M,ALL,CR1,7,BM+PB
10.53,2,F,ALL,CR1,17,BM+PB
123.9,0,M,ALL,CR1,26,BM+PB
2,1,F,ALL,Relapse,8,BM+PB
1.7,2,M,ALL,Relapse,29,BM+PB
6.33,2,M,AML,Relapse,13,BM+PB
2.3,2,F,AML,CR2,29,BM+PB
3.57,1,M,ALL,Relapse,7,BM+PB
0.4,2,M,ALL,Relapse,40,BM+PB
0.87,2,F,ALL,CR2,20,BM+PB
121.1,0,M,ALL,CR3,18,BM+PB
5.27,2,M,AML,CR1,29,BM+PB
7.5,2,M,ALL,CR1,6,BM+PB
6.3,2,M,AML,CR2,33,BM+PB
6.13,1,F,ALL,CR3,27,BM+PB
2.8,2,F,ALL,CR2,22,PB
5.37,1,M,ALL,CR3,15,PB
2.87,1,M,ALL,CR2,8,PB
10.9,2,M,AML,CR2,46,PB
3.07,1,M,ALL,Relapse,21,PB
1.7,1,F,ALL,Relapse,21,PB
114.7,0,M,AML,Relapse,7,PB
1.8,1,M,ALL,Relapse,4,PB
114.1,0,F,AML,Relapse,53,PB
35,1,M,AML,CR2,27,PB
112.93,0,M,AML,Relapse,28,PB
3.63,2,F,ALL,CR2,23,PB
112.23,0,M,ALL,Relapse,17,PB
1.67,1,F,ALL,Relapse,19,PB
7.63,2,M,AML,Relapse,39,PB
7.53,1,M,ALL,CR2,15,PB
110.37,0,M,AML,CR2,47,PB
20.93,2,F,AML,Relapse,16,PB
6.03,2,F,ALL,CR1,17,PB
2.83,2,M,AML,CR3,26,PB
9.63,2,M,AML,CR2,44,PB
3.17,2,F,AML,Relapse,30,PB
9.97,2,M,AML,Relapse,32,PB
5.7,1,M,AML,CR1,20,PB
106.13,0,M,AML,CR1,38,PB
2.53,1,M,ALL,Relapse,17,PB
4.2,1,M,AML,Relapse,38,PB
9.17,2,M,AML,CR2,36,PB
8.73,2,M,AML,CR2,34,PB
85.1,0,F,AML,CR2,42,PB
4.8,2,F,AML,Relapse,58,PB
3.57,2,F,AML,Relapse,30,PB
8,2,F,ALL,CR1,37,PB
82.6,0,M,ALL,CR1,25,PB
81.67,0,F,AML,CR1,47,PB
6,2,F,ALL,CR1,46,PB
6.2,1,M,AML,CR2,21,PB
3.47,2,F,AML,Relapse,17,PB
4.23,1,M,ALL,Relapse,25,PB
1,2,F,AML,CR2,45,PB
7.47,2,M,ALL,CR1,17,PB
6.1,2,M,AML,Relapse,44,PB
77,0,F,AML,CR1,20,PB
76.03,0,M,AML,CR2,18,PB
28.53,1,F,AML,CR2,46,PB
1.97,2,F,AML,Relapse,49,PB
13.07,1,M,ALL,Relapse,17,PB
1.43,2,F,ALL,Relapse,36,PB
72.93,0,M,ALL,CR2,14,PB
71.83,0,M,ALL,Relapse,22,PB
67.8,0,M,AML,CR3,38,PB
8.17,2,F,ALL,CR2,20,PB
7.57,1,F,ALL,Relapse,26,PB
2.4,1,M,ALL,Relapse,20,PB
70.2,0,M,AML,CR1,28,PB
3.03,1,F,AML,Relapse,45,PB
5.87,1,M,AML,Relapse,17,PB
68.83,0,M,AML,CR2,40,PB
1.1,2,F,ALL,Relapse,9,PB
9.13,1,M,AML,Relapse,18,PB
6.07,1,F,AML,Relapse,33,PB
3.3,2,M,ALL,CR1,33,PB
59.17,0,F,AML,CR2,17,PB
1.23,1,F,ALL,Relapse,17,PB
58.23,0,M,AML,CR2,28,PB
58,0,F,AML,CR1,26,PB
56.6,0,M,ALL,CR2,32,PB
3.6,2,M,AML,Relapse,62,PB
1.6,1,M,AML,Relapse,46,PB
5.63,1,F,AML,CR1,20,PB
4.4,2,F,AML,CR2,50,PB
13.8,2,M,AML,Relapse,40,PB
49.27,0,M,AML,CR1,43,PB
9.2,2,F,AML,CR3,31,PB
8.63,1,F,ALL,CR1,46,PB
6.7,2,M,AML,Relapse,51,PB
1.1,1,M,ALL,Relapse,39,PB
5.43,2,F,ALL,Relapse,19,PB
45.3,0,F,ALL,CR1,33,PB
12.57,1,F,AML,Relapse,23,PB
43.67,0,F,ALL,CR1,50,PB
11.8,2,F,AML,CR1,36,PB
43.2,0,M,AML,CR2,36,PB
4.17,2,M,ALL,CR1,35,PB
6.63,1,F,AML,Relapse,41,PB
42.5,0,F,AML,CR1,28,PB
1.87,1,M,AML,CR1,30,PB
1.23,2,F,AML,CR1,39,PB
41.3,0,M,AML,CR1,52,PB
3.9,2,M,AML,CR1,38,PB
4.57,2,M,AML,CR1,35,PB
4.4,2,F,AML,CR3,27,PB
3.7,2,M,AML,CR1,38,PB
3.4,2,F,AML,Relapse,22,PB
20.83,1,M,ALL,CR1,26,PB
8.6,2,F,AML,CR2,47,PB
1.3,1,M,AML,Relapse,17,PB
0.37,2,M,ALL,Relapse,21,PB
0.27,2,M,ALL,CR1,28,PB
35.5,0,M,ALL,CR2,24,PB
35.5,0,F,AML,CR1,35,PB
4.07,1,F,ALL,CR3,19,PB
7.93,1,M,ALL,CR1,23,PB
17.23,1,M,ALL,CR2,33,PB
3.43,2,F,ALL,CR3,38,PB
2,2,M,AML,CR1,36,PB
8.8,2,M,AML,Relapse,48,PB
32.63,0,F,AML,Relapse,25,PB
12.17,2,M,ALL,CR2,22,PB
7.2,2,F,AML,Relapse,37,PB
9,2,M,AML,CR2,52,PB
6,1,F,AML,CR1,53,PB
29.9,0,M,AML,CR2,22,PB
29.2,0,M,ALL,CR2,20,PB
28.7,0,M,AML,CR1,51,PB
42.17,1,M,AML,Relapse,33,PB
0.13,2,F,AML,CR3,33,PB
3.63,1,M,ALL,CR1,20,PB
12.27,1,M,AML,Relapse,37,PB
26.13,0,F,AML,CR1,14,PB
4.73,1,M,AML,CR1,33,PB
3.93,2,F,AML,Relapse,55,PB
24.77,0,F,ALL,CR2,16,PB
2.03,1,F,AML,Relapse,52,PB
6.6,2,M,ALL,CR1,43,PB
9.43,1,M,ALL,Relapse,18,PB
5,1,M,AML,CR2,39,PB
1.87,1,F,ALL,Relapse,14,PB
5.6,1,F,AML,Relapse,28,PB
19.9,0,M,ALL,Relapse,13,PB
1.2,1,F,AML,Relapse,34,PB
5.23,2,M,AML,Relapse,58,PB
3.5,2,F,AML,CR2,14,PB
2.8,2,M,AML,Relapse,16,PB
1.47,2,M,AML,Relapse,52,PB
7.63,1,M,ALL,Relapse,48,PB
2.23,1,F,ALL,CR2,45,PB
0.87,2,F,AML,Relapse,41,PB
7.2,2,M,AML,Relapse,45,PB
3.23,2,F,ALL,Relapse,25,PB
3.57,2,F,AML,CR2,34,PB
4.57,2,M,AML,CR1,37,PB
1.77,2,F,AML,Relapse,41,PB
16.83,0,F,ALL,CR2,32,PB
16.6,0,M,AML,CR1,28,PB
16.13,0,F,ALL,CR1,51,PB
2.7,2,M,ALL,CR2,11,PB
10.3,1,M,ALL,Relapse,20,PB
15.17,0,F,AML,CR1,54,PB
7,1,F,AML,CR2,17,PB
2.53,1,M,AML,Relapse,44,PB
14.5,0,M,AML,CR2,21,PB
2.3,1,F,AML,Relapse,44,PB
10.2,0,M,AML,CR1,23,PB
9.97,0,F,AML,CR3,27,PB
7.63,1,M,AML,Relapse,48,PB
"""


@dataclass(frozen=True)
class CompetingCohort:
    """Individual-level data: integer times, causes 0/1/2, group labels, study horizon."""

    name: str
    time: np.ndarray
    cause: np.ndarray
    group: np.ndarray
    horizon: int

    def truncated(self) -> tuple[np.ndarray, np.ndarray]:
        """Times and causes after censoring at the horizon (the reference side's own)."""
        beyond = self.time > self.horizon
        return np.minimum(self.time, self.horizon), np.where(beyond, 0, self.cause)


def bmtcrr() -> pd.DataFrame:
    """The bmtcrr data frame (ftime in months, Status 0/1/2, D in ALL/AML, ...)."""
    return pd.read_csv(io.StringIO(BMTCRR_CSV))


def _days(values: np.ndarray, per_unit: float) -> np.ndarray:
    return np.ceil(np.round(np.asarray(values, dtype=float) * per_unit, 6)).astype(np.int64)


def _synthetic(seed: int) -> CompetingCohort:
    rng = np.random.default_rng(seed)
    n = 600
    group = rng.choice(np.array(["a", "b", "c"]), size=n, p=[0.5, 0.35, 0.15])
    time = 7 * np.floor(rng.exponential(np.where(group == "a", 20.0, 35.0))).astype(np.int64)
    cause = rng.choice(3, size=n, p=[0.35, 0.4, 0.25])
    time[:30] = 0  # day-0 events of both causes and day-0 censorings
    cause[:30] = np.arange(30) % 3
    return CompetingCohort("synthetic", time, cause, group, horizon=365)


@cache
def competing_cohort(name: str) -> CompetingCohort:
    """Load one named competing-risks cohort."""
    if name == "bmt":
        x, y = load_bmt()
        group = np.where(x["dis"].astype(int) == 0, "ALL", "AML")
        time = y["ftime"].astype(np.int64)
        return CompetingCohort(name, time, y["status"].astype(np.int64), group, 80)
    if name == "bmtcrr":
        df = bmtcrr()
        time = _days(df["ftime"].to_numpy(), 30.4375)
        return CompetingCohort(name, time, df["Status"].to_numpy(), df["D"].to_numpy(), 4100)
    if name == "cgvhd":
        x, y = load_cgvhd()
        cause = np.minimum(y["status"].astype(np.int64), 2)
        time = _days(y["ftime"], 365.25)
        return CompetingCohort(name, time, cause, x["dx"].astype(str).to_numpy(), 1100)
    if name == "flchain":
        x, y = load_flchain()
        chapter = x["chapter"].astype(object).to_numpy()
        cause = np.where(~y["death"], 0, np.where(chapter == "Circulatory", 1, 2))
        time = _days(y["futime"], 1.0)
        return CompetingCohort(name, time, cause, x["sex"].astype(str).to_numpy(), 1826)
    if name == "synthetic":
        return _synthetic(20260202)
    raise KeyError(name)


COMPETING_COHORTS = ("bmt", "bmtcrr", "cgvhd", "flchain", "synthetic")
SEEDS = (1, 2, 3)


def split_sites(n: int, seed: int) -> np.ndarray:
    """Random site index (0..k-1) per individual, with k drawn from 2..10."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, int(rng.integers(2, 11)), size=n)


def site_competing(
    c: CompetingCohort, site: np.ndarray, mask: np.ndarray | None = None
) -> list[CompetingCounts]:
    """Per-site counts from untruncated times (the sites apply the horizon themselves)."""
    mask = np.ones(c.time.size, dtype=bool) if mask is None else mask
    return [
        competing_counts(c.time[mask & (site == s)], c.cause[mask & (site == s)], c.horizon)
        for s in np.unique(site)
    ]
