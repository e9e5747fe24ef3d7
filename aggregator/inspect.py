"""Everything the aggregator can compute from its database about one study, for an audit.

``heron aggregator inspect STUDY`` (and tests) call :func:`inspect_study`: it reads the study's
stored rounds (``round_tasks``: every round's task per site, with the site's answer kept as a
``TaskResult`` blob, never overwritten by a later round) and computes from them what an
aggregator operator, or a thief of the database file, could compute:

* for every data round and analysis, the **pooled sum** of the sites' releases: under secure
  aggregation the unmasked sum of the masked releases of all the round's participants (the
  only sum whose masks cancel; with a participant missing there is none), without it each
  site's own release and their sum;
* the **requests** the aggregator sent in every round, rebuilt by replaying the pure round
  loop (:class:`aggregator.run.StudyRun`) over the stored answers (the store keeps the run
  state of the current round only, and the requests follow from it deterministically);
* the key announcements (public keys) of key-exchange rounds and each task's state and reason.

Vectors are named by their labels: a grouped vector ``g{i}.{part}`` of a release whose
``metadata["groups"]`` names group ``i`` is shown as ``"{group}.{part}"`` (``t{i}.{part}`` of
adverse-event terms likewise), so unmasked sites that release different groups are summed
group by group. Other vectors (Cox sums, log-rank terms) keep their wire names. In unmasked
sums a count a site withheld (:data:`protocol.releases.SUPPRESSED`) adds 0, as the strategies
pool it, and the analysis says how many such cells there were.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from aggregator.config import ENV_PREFIX, read_config_file
from aggregator.errors import StoreError, UnknownStudy
from aggregator.run import Answer, Failure, RunState, StudyRun
from aggregator.store import Store, decode_task_result
from aggregator.strategies import default_strategies
from protocol.codec import Release, json_default
from protocol.errors import ProtocolError
from protocol.releases import SUPPRESSED
from protocol.rounds import KEYS, STEP_ANNOUNCE, STEP_NEWTON, STEP_RELAY
from protocol.secure_agg import unmask_sum
from protocol.signing import SignedStudy
from protocol.study import Study, study_from_dict
from protocol.vocabulary import GROUPS, TERMS

__all__ = [
    "AnalysisInspection",
    "RoundInspection",
    "SiteRelease",
    "StudyInspection",
    "TaskInspection",
    "inspect_database",
    "inspect_study",
    "resolve_db_path",
]

Vector = NDArray[np.int64] | NDArray[np.float64]

_LABELLED = re.compile(r"^([gt])(\d+)\.(.+)$")
_MAX_REPLAY_ROUNDS = 10_000


@dataclass(frozen=True)
class SiteRelease:
    """One site's (unmasked) release of one analysis in one round, vectors by label."""

    site: str
    vectors: dict[str, Vector]
    metadata: dict[str, Any]
    error: str = ""


@dataclass(frozen=True)
class AnalysisInspection:
    """What the aggregator holds about one analysis in one round.

    Attributes
    ----------
    pooled
        The pooled sum by vector label, or ``None`` when the aggregator cannot form one (a
        masked round with a participant's release missing; ``note`` says why).
    sites
        The sites whose data the pooled sum covers.
    releases
        Unmasked rounds: each site's own release (masked releases are uniformly random
        without the masks and are not shown).
    errors
        Sites that answered this analysis with an error release, and their reason.
    metadata
        The releases' metadata (masked: the first participant's, as travelled in plaintext).
    withheld
        Unmasked rounds: how many counts sites withheld (summed as 0).
    """

    name: str
    kind: str
    masked: bool
    sites: tuple[str, ...]
    pooled: dict[str, Vector] | None
    metadata: dict[str, Any] = field(default_factory=dict)
    releases: dict[str, SiteRelease] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    withheld: int = 0
    note: str = ""


@dataclass(frozen=True)
class TaskInspection:
    """One site's task of one round: its state, reason and the requests it carried.

    ``requests`` is ``None`` when the round loop's replay could not rebuild them.
    """

    site: str
    state: str
    reason: str
    requests: tuple[Release, ...] | None


@dataclass(frozen=True)
class RoundInspection:
    """One stored round of a study.

    ``phase`` is ``keys`` (a key exchange of secure aggregation) or ``data``; ``attempt`` the
    key-exchange attempt (0 for an unmasked study); ``participants`` the sites whose masked
    releases must all be summed (masked rounds: the relayed announcements' sites) or the
    sites asked.
    """

    round: int
    phase: str
    attempt: int
    masked: bool
    participants: tuple[str, ...]
    tasks: dict[str, TaskInspection]
    announcements: dict[str, dict[str, Any]] = field(default_factory=dict)
    analyses: dict[str, AnalysisInspection] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyInspection:
    """Everything the aggregator's database gives about one study (see the module doc)."""

    study_id: str
    title: str
    status: str
    secure_aggregation: bool
    min_sites: int
    sites: dict[str, tuple[str, str]]
    rounds: tuple[RoundInspection, ...]
    notes: tuple[str, ...] = ()

    def round(self, number: int) -> RoundInspection:
        """The round with this number (``KeyError`` when not stored)."""
        for r in self.rounds:
            if r.round == number:
                return r
        raise KeyError(f"study {self.study_id} has no stored round {number}")

    def pooled_sums(self) -> list[tuple[int, str, AnalysisInspection]]:
        """Every analysis of every round that has a pooled sum: ``(round, name, analysis)``."""
        return [(r.round, name, a) for r in self.rounds for name, a in r.analyses.items()
                if a.pooled is not None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (vectors as lists, requests as their fields)."""
        return {
            "study_id": self.study_id, "title": self.title, "status": self.status,
            "secure_aggregation": self.secure_aggregation, "min_sites": self.min_sites,
            "sites": {s: {"state": st, "reason": why} for s, (st, why) in self.sites.items()},
            "notes": list(self.notes),
            "rounds": [_round_dict(r) for r in self.rounds],
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, default=_json_default)

    def to_text(self) -> str:
        """A plain-text listing of every round, request and pooled sum (zeros left out)."""
        lines = [f"study {self.study_id}: {self.title}",
                 f"status {self.status}; secure aggregation "
                 f"{'on' if self.secure_aggregation else 'off'}; min_sites {self.min_sites}"]
        lines += [f"site {s}: {st}" + (f" ({why})" if why else "")
                  for s, (st, why) in self.sites.items()]
        lines += [f"note: {n}" for n in self.notes]
        for r in self.rounds:
            lines.append("")
            head = f"round {r.round}: {r.phase}"
            if r.attempt:
                head += f", attempt {r.attempt}"
            head += ", masked" if r.masked else ""
            lines.append(f"{head}; participants {', '.join(r.participants) or '-'}")
            for task in r.tasks.values():
                lines.append(f"  task {task.site}: {task.state}"
                             + (f" ({task.reason})" if task.reason else ""))
                if task.requests is None:
                    lines.append("    requests: not reconstructed")
                for request in task.requests or ():
                    lines.append(f"    request {_request_text(request)}")
            for site in r.announcements:
                lines.append(f"  key announcement of {site}")
            for a in r.analyses.values():
                lines += _analysis_text(a)
        return "\n".join(lines)


# -- the library call ------------------------------------------------------------------------------

def inspect_study(store: Store, study_id: str) -> StudyInspection:
    """Everything ``store`` holds and implies about one study (see the module doc).

    Raises
    ------
    UnknownStudy
        When the store has no such study.
    """
    record = store.get_study(study_id)
    if record is None:
        raise UnknownStudy(f"no study {study_id!r}")
    notes: list[str] = []
    signed = SignedStudy(record.canonical_study, record.signature, record.public_key)
    study = study_from_dict(signed.study_document())
    numbers = [int(r[0]) for r in store.query(
        "SELECT DISTINCT round FROM round_tasks WHERE study_id=? ORDER BY round", (study_id,))]
    stored = {n: store.round_tasks(study_id, n) for n in numbers}
    answers = {n: {t.site_id: _answer(t.state, t.reason, t.result) for t in tasks}
               for n, tasks in stored.items()}
    participants = store.study_sites(study_id)
    requests = _replay(study, [p.site_id for p in participants], stored, answers, notes)
    rounds = []
    for n, tasks in stored.items():
        asked = requests.get(n)
        rounds.append(_inspect_round(study, n, tasks, answers[n], asked))
    return StudyInspection(
        study_id=study_id, title=record.title, status=record.status,
        secure_aggregation=study.privacy.secure_aggregation,
        min_sites=study.privacy.min_sites,
        sites={p.site_id: (p.state, p.reason) for p in participants},
        rounds=tuple(rounds), notes=tuple(notes))


def resolve_db_path(config_file: Path | None, db: Path | None,
                    env: Mapping[str, str] | None = None) -> Path:
    """The aggregator database as ``heron aggregator run`` would find it: ``db`` (the flag),
    then ``HERON_AGGREGATOR_DB_PATH``, then the config file's ``db_path``.

    Raises
    ------
    StoreError
        When none names a database, or the database file does not exist.
    """
    environ = os.environ if env is None else env
    path: Path | None = db
    if path is None and environ.get(ENV_PREFIX + "DB_PATH"):
        path = Path(environ[ENV_PREFIX + "DB_PATH"]).expanduser()
    if path is None and config_file is not None:
        found = read_config_file(config_file).get("db_path")
        path = Path(found) if found is not None else None
    if path is None:
        raise StoreError("no aggregator database: give --db, --config with db_path, or "
                         f"{ENV_PREFIX}DB_PATH")
    if not path.is_file():
        raise StoreError(f"no aggregator database at {path}")
    return path


def inspect_database(path: Path, study_id: str) -> StudyInspection:
    """Open the database at ``path`` and :func:`inspect_study` it (the CLI's call)."""
    store = Store(path)
    try:
        return inspect_study(store, study_id)
    finally:
        store.close()


# -- rounds ----------------------------------------------------------------------------------------

def _answer(state: str, reason: str, blob: bytes | None) -> Answer | None:
    """A stored task's answer as the round loop saw it; ``None`` while still open."""
    if state == "answered":
        return decode_task_result(blob or b"")
    if state in ("refused", "silent"):
        return Failure(reason, silent=state == "silent")
    return None


def _replay(study: Study, participants: list[str], stored: Mapping[int, Sequence[Any]],
            answers: Mapping[int, Mapping[str, Answer | None]],
            notes: list[str]) -> dict[int, dict[str, tuple[Release, ...]]]:
    """Each stored round's requests, from the pure round loop run over the stored answers as
    the engine ran it; stops (with a note) where the replay and the store disagree."""
    try:
        run = StudyRun(study, default_strategies())
        state: RunState = run.start(participants)
    except (ProtocolError, ValueError) as exc:
        notes.append(f"requests not reconstructed: {exc}")
        return {}
    out: dict[int, dict[str, tuple[Release, ...]]] = {}
    for _ in range(_MAX_REPLAY_ROUNDS):
        if run.finished(state):
            break
        requests = run.requests(state)
        if not requests:  # nobody to ask: the engine advances without a stored round
            state = run.advance(state, {})
            continue
        if state.round not in stored:
            break
        tasks = {t.site_id for t in stored[state.round]}
        if tasks != set(requests):
            notes.append(f"requests of round {state.round} and later not reconstructed: the "
                         f"replay asks {sorted(requests)}, the store has tasks of "
                         f"{sorted(tasks)}")
            break
        out[state.round] = requests
        got = answers[state.round]
        if any(a is None for a in got.values()):
            break  # the current round of a running study
        state = run.advance(state, {s: a for s, a in got.items() if a is not None})
    return out


def _inspect_round(study: Study, number: int, tasks: Sequence[Any],
                   got: Mapping[str, Answer | None],
                   requests: Mapping[str, tuple[Release, ...]] | None) -> RoundInspection:
    steps = [(r.metadata.get("step"), r) for reqs in (requests or {}).values() for r in reqs
             if r.analysis == KEYS]
    relay = next((r for step, r in steps if step == STEP_RELAY), None)
    announce = next((r for step, r in steps if step == STEP_ANNOUNCE), None)
    replies = {s: a for s, a in got.items() if isinstance(a, tuple)}
    announcements = {s: dict(r.metadata["announcement"]) for s, rs in replies.items()
                     for r in rs if r.analysis == KEYS
                     and isinstance(r.metadata.get("announcement"), dict)}
    keys_round = announce is not None or (requests is None and bool(announcements))
    masked = study.privacy.secure_aggregation and not keys_round
    if relay is not None:
        participants = tuple(sorted(str(a.get("site_id", "")) for a in
                                    relay.metadata.get("announcements", [])))
    else:
        participants = tuple(sorted(t.site_id for t in tasks))
    attempt = 0
    for r in (relay, announce):
        if r is not None:
            attempt = int(r.metadata.get("attempt", 0))
    task_view = {t.site_id: TaskInspection(
        t.site_id, t.state, t.reason,
        None if requests is None else requests.get(t.site_id, ())) for t in tasks}
    analyses: dict[str, AnalysisInspection] = {}
    if not keys_round:
        for analysis in study.analyses:
            mine = {s: r for s, rs in replies.items() for r in rs if r.analysis == analysis.name}
            if not mine:
                continue
            analyses[analysis.name] = (_masked(analysis.name, analysis.kind, participants, mine)
                                       if masked else
                                       _plain(analysis.name, analysis.kind, mine))
    return RoundInspection(round=number, phase="keys" if keys_round else "data",
                           attempt=attempt, masked=masked, participants=participants,
                           tasks=task_view, announcements=announcements, analyses=analyses)


def _masked(name: str, kind: str, participants: tuple[str, ...],
            mine: Mapping[str, Release]) -> AnalysisInspection:
    errors = {s: r.error for s, r in mine.items() if r.error}
    usable = {s: r for s, r in sorted(mine.items()) if not r.error}
    missing = [s for s in participants if s not in usable]
    extra = [s for s in usable if s not in participants]
    meta = dict(next(iter(usable.values())).metadata) if usable else {}
    if missing or extra or not usable:
        why = (f"no release of {', '.join(missing)}" if missing
               else f"releases of non-participants {', '.join(extra)}" if extra
               else "no releases")
        return AnalysisInspection(name, kind, True, (), None, meta, errors=errors,
                                  note=f"no pooled sum: the masks do not cancel ({why})")
    try:
        summed = unmask_sum([usable[s] for s in participants])
    except (ProtocolError, ValueError) as exc:
        return AnalysisInspection(name, kind, True, (), None, meta, errors=errors,
                                  note=f"no pooled sum: {exc}")
    return AnalysisInspection(name, kind, True, participants, _labelled(summed),
                              dict(summed.metadata), errors=errors)


def _plain(name: str, kind: str, mine: Mapping[str, Release]) -> AnalysisInspection:
    errors = {s: r.error for s, r in mine.items() if r.error}
    releases = {s: SiteRelease(s, _labelled(r), dict(r.metadata), r.error)
                for s, r in sorted(mine.items())}
    usable = {s: r for s, r in releases.items() if not r.error}
    pooled: dict[str, Vector] = {}
    withheld = 0
    odd: list[str] = []
    for label in sorted({k for r in usable.values() for k in r.vectors}):
        parts = [np.asarray(r.vectors[label]) for r in usable.values() if label in r.vectors]
        if len({p.shape for p in parts}) > 1:
            odd.append(label)
            continue
        if all(p.dtype.kind in "biu" for p in parts):
            withheld += sum(int(np.count_nonzero(p == SUPPRESSED)) for p in parts)
            pooled[label] = np.asarray(np.sum([np.where(p == SUPPRESSED, 0, p) for p in parts],
                                              axis=0), dtype=np.int64)
        else:
            pooled[label] = np.asarray(np.sum(parts, axis=0), dtype=np.float64)
    note = f"vectors of different lengths not summed: {', '.join(odd)}" if odd else ""
    return AnalysisInspection(name, kind, False, tuple(usable), pooled if usable else None,
                              {}, releases, errors, withheld, note)


def _labelled(release: Release) -> dict[str, Vector]:
    """A release's vectors by label: ``g{i}.part`` -> ``{groups[i]}.part`` (and terms)."""
    out: dict[str, Vector] = {}
    lists = {"g": release.metadata.get(GROUPS), "t": release.metadata.get(TERMS)}
    for key, value in release.vectors.items():
        arr = np.asarray(value)
        match = _LABELLED.match(key)
        names = lists.get(match.group(1)) if match else None
        if match and isinstance(names, list) and int(match.group(2)) < len(names):
            key = f"{names[int(match.group(2))]}.{match.group(3)}"
        out[key] = arr.astype(np.int64) if arr.dtype.kind in "biu" else arr.astype(np.float64)
    return out


# -- rendering -------------------------------------------------------------------------------------

def _json_default(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else json_default(value)


def _request_dict(request: Release) -> dict[str, Any]:
    return {"analysis": request.analysis, "kind": request.kind,
            "metadata": dict(request.metadata),
            "vectors": {k: np.asarray(v).tolist() for k, v in request.vectors.items()}}


def _round_dict(r: RoundInspection) -> dict[str, Any]:
    return {
        "round": r.round, "phase": r.phase, "attempt": r.attempt, "masked": r.masked,
        "participants": list(r.participants),
        "tasks": {s: {"state": t.state, "reason": t.reason,
                      "requests": None if t.requests is None
                      else [_request_dict(q) for q in t.requests]}
                  for s, t in r.tasks.items()},
        "announcements": r.announcements,
        "analyses": {n: {
            "kind": a.kind, "masked": a.masked, "sites": list(a.sites),
            "pooled": None if a.pooled is None else {k: v.tolist() for k, v in a.pooled.items()},
            "metadata": a.metadata,
            "releases": {s: {"vectors": {k: v.tolist() for k, v in rel.vectors.items()},
                             "metadata": rel.metadata, "error": rel.error}
                         for s, rel in a.releases.items()},
            "errors": a.errors, "withheld": a.withheld, "note": a.note}
            for n, a in r.analyses.items()},
    }


def _request_text(request: Release) -> str:
    step = request.metadata.get("step", "?")
    if request.analysis == KEYS:
        text = f"{step} attempt {request.metadata.get('attempt')}"
        if step == STEP_RELAY:
            sites = [str(a.get("site_id")) for a in request.metadata.get("announcements", [])]
            text += f" (keys of {', '.join(sites)})"
        return text
    text = f"{step} {request.analysis} ({request.kind})"
    if step == STEP_NEWTON:
        columns = request.metadata.get("columns", [])
        text += " at " + ", ".join(f"{c}={float(b):.10g}" for c, b in
                                   zip(columns, np.asarray(request.vectors.get("beta", ())),
                                       strict=False))
    return text


def _vector_text(label: str, value: Vector) -> str:
    arr = np.asarray(value).ravel()
    if arr.dtype.kind == "f":
        body = " ".join(f"{float(v):.10g}" for v in arr)
        return f"{label} [{arr.size}]: {body}"
    if arr.size <= 12:
        return f"{label} [{arr.size}]: " + " ".join(str(int(v)) for v in arr)
    nonzero = np.flatnonzero(arr)
    body = " ".join(f"{int(i)}:{int(arr[i])}" for i in nonzero) or "all zero"
    return f"{label} [{arr.size}, total {int(arr.sum())}; index:value of non-zeros]: {body}"


def _analysis_text(a: AnalysisInspection) -> list[str]:
    how = "masked" if a.masked else "unmasked"
    lines = [f"  analysis {a.name} ({a.kind}, {how})"]
    for site, why in a.errors.items():
        lines.append(f"    error release of {site}: {why}")
    for site, rel in a.releases.items():
        if rel.error:
            continue
        lines.append(f"    release of {site}:")
        lines += [f"      {_vector_text(k, v)}" for k, v in rel.vectors.items()]
    if a.pooled is None:
        lines.append(f"    {a.note or 'no pooled sum'}")
        return lines
    lines.append(f"    pooled sum of {', '.join(a.sites)}:")
    lines += [f"      {_vector_text(k, v)}" for k, v in a.pooled.items()]
    if a.withheld:
        lines.append(f"    {a.withheld} withheld counts summed as 0")
    if a.note:
        lines.append(f"    note: {a.note}")
    return lines
