"""``heron demo``: synthetic sites, a real loopback network, the standard study, a report."""

from __future__ import annotations

import datetime as dt
import importlib.resources
from pathlib import Path

from heron.network import Progress, SimulationResult, simulate
from heron.synth import synthesize
from protocol.study import Study, study_from_dict
from protocol.study_yaml import load_study_yaml

__all__ = ["demo_study", "run_demo"]


def demo_study(today: dt.date | None = None) -> Study:
    """The embedded standard study, expiring 90 days after ``today``."""
    text = importlib.resources.files("heron").joinpath("data/demo-study.yaml").read_text("utf-8")
    doc = load_study_yaml(text)
    doc["expires"] = ((today or dt.date.today()) + dt.timedelta(days=90)).isoformat()
    return study_from_dict(doc)


def run_demo(out_dir: Path, sites: int = 4, patients: int = 300, seed: int = 2026,
             progress: Progress = lambda msg: None) -> SimulationResult:
    """Make synthetic sites and run the standard study on a loopback network."""
    progress(f"synthesising {sites} sites (about {patients} patients each)")
    folders = synthesize(out_dir / "sites", sites=sites, patients=patients, seed=seed)
    return simulate({f.site_id: f.path for f in folders}, demo_study(), out_dir,
                     progress=progress)
