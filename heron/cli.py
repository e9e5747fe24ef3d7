"""The ``heron`` command line: parses flags and calls typed library functions."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heron import __version__
from heron.errors import HeronError

if TYPE_CHECKING:  # imported lazily by the handlers, so the CLI starts fast
    from node.runtime.config import NodeConfig

logger = logging.getLogger(__name__)
Handler = Callable[[argparse.Namespace], int]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _emit(data: Any, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2) if as_json else text)


# ---- handlers: each only translates flags into one library call -----------------------------

def _demo(a: argparse.Namespace) -> int:
    from heron.demo import run_demo

    result = run_demo(Path(a.out), sites=a.sites, patients=a.patients, seed=a.seed, progress=_say)
    print(f"results: {result.results_path}\nreport:  {result.report_path}")
    return 0


def _parse_sites(values: Sequence[str]) -> dict[str, Path]:
    sites: dict[str, Path] = {}
    for v in values:
        site, sep, folder = v.partition("=")
        if not sep or not site or not folder:
            raise HeronError(f"--site {v!r}: expected ID=FOLDER")
        if site in sites:
            raise HeronError(f"--site {site}: given twice")
        sites[site] = Path(folder)
    return sites


def _simulate(a: argparse.Namespace) -> int:
    from heron.coordinator import load_study
    from heron.network import simulate

    study = load_study(Path(a.study))
    result = simulate(_parse_sites(a.site), study, Path(a.out),
                      policy_file=Path(a.policy) if a.policy else None, progress=_say,
                      runtime=a.runtime)
    print(f"results: {result.results_path}\nreport:  {result.report_path}")
    return 0


def _synth(a: argparse.Namespace) -> int:
    from heron.synth import synthesize

    folders = synthesize(Path(a.out), sites=a.sites, patients=a.patients, seed=a.seed,
                         fmt=a.format,
                         progress=lambda site, done, total: _say(f"[{done}/{total}] {site}"))
    _emit([{"site_id": f.site_id, "path": str(f.path), "patients": f.patients} for f in folders],
          a.json, "\n".join(f"{f.site_id}\t{f.patients}\t{f.path}" for f in folders))
    return 0


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise HeronError(f"{path}: {exc.strerror}") from None


def _pki(a: argparse.Namespace) -> int:
    from protocol import pki
    from protocol.keys import generate_signing_key

    if a.pki_cmd == "init":
        pki.init_ca(Path(a.dir))
        print(f"network CA written to {a.dir}")
    elif a.pki_cmd == "issue-site":
        pki.issue_site(Path(a.ca), a.site, Path(a.out))
        print(f"site credentials for {a.site} written to {a.out}")
    elif a.pki_cmd == "issue-aggregator":
        pki.issue_aggregator(Path(a.ca), Path(a.out), hosts=tuple(a.host))
        print(f"aggregator credentials written to {a.out}")
    else:
        pki.issue_coordinator(Path(a.ca), a.name, Path(a.out))
        generate_signing_key(Path(a.out) / "signing.key")
        print(f"coordinator credentials and signing key written to {a.out}")
    return 0


def _node_config(a: argparse.Namespace, **overrides: Any) -> NodeConfig:
    from node.runtime.config import resolve_config

    return resolve_config(Path(a.dir), overrides=overrides)


def _node(a: argparse.Namespace) -> int:
    from node.runtime import service

    if a.node_cmd == "init":
        from node.runtime.config import NodeConfig

        config = NodeConfig(node_dir=Path(a.dir).resolve(), site_id=a.site,
                            aggregator=a.aggregator)
        service.init_node(config, trusted=tuple(a.trust))
        print(f"node {a.site} initialised in {a.dir} (edit policy.toml to change the policy)")
        return 0
    if a.node_cmd == "validate":
        from node.ingestion.ingest import validate_folder

        report = validate_folder(Path(a.source))
        _emit(report.to_dict(), a.json, report.summary())
        return 0 if report.ok else 1
    config = _node_config(a, aggregator=getattr(a, "aggregator", None))
    if a.node_cmd == "ingest":
        report = service.ingest_site(config, Path(a.source), progress=_say)
        _emit(report.to_dict(), a.json, report.summary())
        return 0
    if a.node_cmd == "status":
        status = service.node_status(config)
        _emit(status.to_dict(), a.json,
              "\n".join(f"{k}: {v}" for k, v in status.to_dict().items()))
        return 0
    if a.node_cmd == "audit":
        from node.governance.audit import AuditTrail, verify_audit

        path = config.path("audit_file")
        if a.verify:
            audit = verify_audit(path, store_dir=config.path("store_dir"))
            _emit(audit.__dict__, a.json, f"audit trail {'intact' if audit.ok else 'BROKEN'}: "
                  f"{audit.entries} entries" + ("" if audit.ok else f"; {audit.reason}"))
            return 0 if audit.ok else 1
        entries = AuditTrail(path).entries()
        _emit(entries, a.json, "\n".join(
            f"{e['seq']:>5} {e['time']} {e['event']:<18} {e.get('study_id') or ''}"
            for e in entries))
        return 0
    if a.node_cmd == "pending":
        from node.governance.approvals import summary_lines

        pending = service.pending_studies(config)
        _emit(pending, a.json, "\n".join(
            "\n".join(summary_lines(s)) for s in pending) or "no study awaits approval")
        return 0
    if a.node_cmd == "approve":
        item = service.approve_study(config, a.study)
        print(f"study {item.study_id} approved (content {item.digest[:12]}); the node answers "
              "it when the aggregator sends it again")
        return 0
    if a.node_cmd == "reject":
        item = service.reject_study(config, a.study, a.reason)
        print(f"study {item.study_id} rejected (content {item.digest[:12]})")
        return 0
    service.build_daemon(config).run_until_signal()
    return 0


def _aggregator(a: argparse.Namespace) -> int:
    if a.agg_cmd == "inspect":
        from aggregator.inspect import inspect_database, resolve_db_path

        db = resolve_db_path(Path(a.config) if a.config else None, Path(a.db) if a.db else None)
        inspection = inspect_database(db, a.study_id)
        print(inspection.to_json() if a.json else inspection.to_text())
        return 0
    from aggregator.service import run_aggregator

    overrides = {
        "listen": a.listen, "db_path": a.db, "credentials_dir": a.credentials,
        "trusted_coordinators": tuple(a.trusted_coordinator) if a.trusted_coordinator else None,
        "site_timeout_s": a.site_timeout,
    }
    return run_aggregator(Path(a.config) if a.config else None, overrides,
                          Path(a.port_file) if a.port_file else None)


def _study(a: argparse.Namespace) -> int:
    if a.study_cmd == "new":
        from heron.study_tools import write_study_template

        text = write_study_template(Path(a.out) if a.out else None)
        if a.out:
            print(f"study template written to {a.out}")
        else:
            sys.stdout.write(text)
        return 0
    if a.study_cmd == "check":
        from heron.study_tools import check_study_file

        check = check_study_file(Path(a.study))
        _emit(check.to_dict(), a.json, check.summary())
        return 0 if check.ok else 1
    if a.study_cmd == "sign":
        from heron.coordinator import sign_study_file
        from heron.study_tools import describe_signed_study

        signed = sign_study_file(Path(a.study), Path(a.key), Path(a.out))
        print(describe_signed_study(signed))  # what the signature covers, read from its bytes
        print(f"signed study written to {a.out} ({len(signed.signature)}-byte Ed25519 signature)")
        return 0
    if a.study_cmd == "report":
        from heron.report import render_report

        results = json.loads(_read(Path(a.results)))
        out = render_report(results, Path(a.out))
        print(f"report: {out}")
        return 0
    from heron.coordinator import CoordinatorClient  # gRPC, protobuf and the TLS credentials

    with CoordinatorClient(a.aggregator, Path(a.credentials)) as client:
        if a.study_cmd == "submit":
            from protocol.signing import SignedStudy

            study_id = client.submit(SignedStudy.from_file(Path(a.signed)))
            if not a.wait:
                _emit({"study_id": study_id}, a.json, f"submitted {study_id}")
                return 0
            if not a.json:
                print(f"submitted {study_id}; waiting for it to end", flush=True)
            # completion is pushed by the aggregator (WaitStudy), not polled
            s = client.wait_for_completion(study_id, a.timeout)
            _emit(s, a.json, f"{s['study_id']}: {s['status']}\n" + "\n".join(
                f"  {site}: {v['state']}{' (' + v['reason'] + ')' if v['reason'] else ''}"
                for site, v in s["sites"].items()))
            return 0 if s["status"] == "completed" else 1
        elif a.study_cmd == "status":
            s = client.status(a.study_id)
            _emit(s, a.json, f"{s['study_id']}: {s['status']}\n" + "\n".join(
                f"  {site}: {v['state']}{' (' + v['reason'] + ')' if v['reason'] else ''}"
                for site, v in s["sites"].items()))
        elif a.study_cmd == "list":
            studies = client.list_studies()
            _emit(studies, a.json, "\n".join(f"{s['study_id']}\t{s['status']}\t{s['title']}"
                                             for s in studies))
        else:
            results = client.results(a.study_id)
            out = Path(a.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")
            from heron.report import render_report

            render_report(results, out / "report.html")
            print(f"results: {out / 'results.json'}\nreport:  {out / 'report.html'}")
    return 0


# ---- parser ----------------------------------------------------------------------------------

def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aggregator", default="localhost:50051", help="aggregator host:port")
    p.add_argument("--credentials", required=True,
                   help="folder with the coordinator's cert.pem, key.pem, ca.pem")


def build_parser() -> argparse.ArgumentParser:
    """The full ``heron`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="heron", description="Hospital-Exemption Outcomes Research Network: federated, "
        "exact outcome analyses of advanced therapies.")
    parser.add_argument("--version", action="version", version=f"heron {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the standard study on synthetic sites over a real "
                       "loopback network")
    p.add_argument("--out", default="heron-demo", help="output folder (default ./heron-demo)")
    p.add_argument("--sites", type=int, default=4, help="number of synthetic sites")
    p.add_argument("--patients", type=int, default=300, help="patients per site (about)")
    p.add_argument("--seed", type=int, default=2026)
    p.set_defaults(func=_demo)

    p = sub.add_parser("simulate", help="run a study on your sites' data over a loopback network")
    p.add_argument("--site", action="append", required=True, metavar="ID=FOLDER",
                   help="a site id and its data folder (repeat)")
    p.add_argument("--study", required=True, help="study YAML or JSON")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--policy", help="site policy TOML applied to every site")
    p.add_argument("--runtime", choices=["daemons", "inprocess", "grpc"], default="daemons",
                   help="daemons: aggregator and nodes as subprocesses (default); grpc: the same "
                        "daemons as threads of this process; inprocess: no network at all")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("synth", help="write realistic synthetic site folders")
    p.add_argument("--sites", type=int, default=4)
    p.add_argument("--patients", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["csv", "parquet"], default="csv")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_synth)

    pki = sub.add_parser("pki", help="network certificate authority and credentials")
    pki_sub = pki.add_subparsers(dest="pki_cmd", required=True, metavar="COMMAND")
    p = pki_sub.add_parser("init", help="create the network CA")
    p.add_argument("--dir", required=True)
    p = pki_sub.add_parser("issue-site", help="issue a site node's certificate")
    p.add_argument("--ca", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--out", required=True)
    p = pki_sub.add_parser("issue-coordinator",
                           help="issue a coordinator certificate and Ed25519 signing key")
    p.add_argument("--ca", required=True)
    p.add_argument("--name", default="coordinator")
    p.add_argument("--out", required=True)
    p = pki_sub.add_parser("issue-aggregator", help="issue the aggregator's server certificate")
    p.add_argument("--ca", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--host", action="append", default=["localhost", "127.0.0.1"])
    pki.set_defaults(func=_pki)

    node = sub.add_parser("node", help="a site's node")
    node_sub = node.add_subparsers(dest="node_cmd", required=True, metavar="COMMAND")
    p = node_sub.add_parser("init", help="set up a node folder with the default policy")
    p.add_argument("--dir", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--aggregator", default="localhost:50051")
    p.add_argument("--trust", action="append", default=[],
                   help="coordinator public key (path or base64) to trust")
    p = node_sub.add_parser("ingest", help="validate and load a site data folder")
    p.add_argument("--dir", required=True)
    p.add_argument("source")
    p.add_argument("--json", action="store_true")
    p = node_sub.add_parser("validate", help="check a site data folder without loading it")
    p.add_argument("source")
    p.add_argument("--json", action="store_true")
    p = node_sub.add_parser("status", help="show the node's state")
    p.add_argument("--dir", required=True)
    p.add_argument("--json", action="store_true")
    p = node_sub.add_parser("audit", help="read or verify the audit trail")
    p.add_argument("--dir", required=True)
    p.add_argument("--verify", action="store_true")
    p.add_argument("--json", action="store_true")
    p = node_sub.add_parser("pending", help="list the studies awaiting approval and what "
                            "each would release (policy approval = manual)")
    p.add_argument("--dir", required=True)
    p.add_argument("--json", action="store_true")
    p = node_sub.add_parser("approve", help="approve a pending study (policy approval = manual)")
    p.add_argument("--dir", required=True)
    p.add_argument("study", metavar="STUDY", help="study id or digest prefix of a pending study")
    p = node_sub.add_parser("reject", help="reject a pending study (policy approval = manual)")
    p.add_argument("--dir", required=True)
    p.add_argument("study", metavar="STUDY", help="study id or digest prefix of a pending study")
    p.add_argument("--reason", default="", help="told to the aggregator with the refusal")
    p = node_sub.add_parser("run", help="run the node daemon")
    p.add_argument("--dir", required=True)
    p.add_argument("--aggregator", help="override the aggregator address")
    node.set_defaults(func=_node)

    agg = sub.add_parser("aggregator", help="the aggregator")
    agg_sub = agg.add_subparsers(dest="agg_cmd", required=True, metavar="COMMAND")
    p = agg_sub.add_parser("run", help="run the aggregator daemon")
    p.add_argument("--config", help="aggregator TOML file")
    p.add_argument("--listen", help="host:port to listen on (port 0 = any free port)")
    p.add_argument("--db", help="SQLite database path")
    p.add_argument("--credentials", help="folder with the aggregator's cert.pem, key.pem, ca.pem")
    p.add_argument("--trusted-coordinator", action="append",
                   help="coordinator public key (path or base64)")
    p.add_argument("--site-timeout", type=float, help="seconds before a silent site is "
                   "reported unreachable")
    p.add_argument("--port-file", help="write the bound port to this file once serving")
    p = agg_sub.add_parser("inspect", help="print every pooled sum and request the aggregator's "
                           "database holds for a study (for an audit of the threat model)")
    p.add_argument("study_id")
    p.add_argument("--config", help="aggregator TOML file (its db_path)")
    p.add_argument("--db", help="SQLite database path (overrides the config)")
    p.add_argument("--json", action="store_true")
    agg.set_defaults(func=_aggregator)

    study = sub.add_parser("study", help="coordinator and researcher side")
    study_sub = study.add_subparsers(dest="study_cmd", required=True, metavar="COMMAND")
    p = study_sub.add_parser("new", help="print (or write) a commented study template")
    p.add_argument("--out", help="write the template to this file (never overwritten)")
    p = study_sub.add_parser("check", help="validate a study file and list every problem "
                             "(no site data or keys needed)")
    p.add_argument("study", help="study YAML or JSON")
    p.add_argument("--json", action="store_true")
    p = study_sub.add_parser("sign", help="sign a study with a coordinator key")
    p.add_argument("study")
    p.add_argument("--key", required=True, help="coordinator signing key (PEM)")
    p.add_argument("--out", required=True)
    p = study_sub.add_parser("submit", help="submit a signed study")
    p.add_argument("signed")
    _client_flags(p)
    p.add_argument("--wait", action="store_true",
                   help="return when the study has ended and print its final status "
                   "(exit 1 when it failed)")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="with --wait: give up after this many seconds (default 3600)")
    p.add_argument("--json", action="store_true")
    for name, helptext in (("status", "show a study's status"),
                           ("results", "fetch results.json and report.html")):
        p = study_sub.add_parser(name, help=helptext)
        p.add_argument("study_id")
        _client_flags(p)
        p.add_argument("--json", action="store_true")
        if name == "results":
            p.add_argument("--out", default=".")
    p = study_sub.add_parser("list", help="list studies")
    _client_flags(p)
    p.add_argument("--json", action="store_true")
    p = study_sub.add_parser("report", help="render report.html from results.json")
    p.add_argument("results")
    p.add_argument("--out", default="report.html")
    study.set_defaults(func=_study)
    return parser


# The error roots whose message the CLI prints on one line (exit status 2), by module. They are
# not imported here: ``import aggregator.errors`` runs ``aggregator/__init__`` and with it the
# whole stack (numpy, scipy, pandas, ...), a second of start-up for every command. An exception
# of one of these classes can only exist once its module has been imported, so a module absent
# from ``sys.modules`` cannot have raised it.
_REPORTED_ERRORS = (("heron.errors", "HeronError"), ("node.errors", "NodeError"),
                    ("protocol.errors", "ProtocolError"), ("aggregator.errors", "AggregatorError"),
                    ("analytics.errors", "AnalyticsError"))


def _is_reported(exc: Exception) -> bool:
    """Whether ``exc`` is a heron error the CLI prints as ``heron: error: ...``."""
    for module_name, class_name in _REPORTED_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, getattr(module, class_name)):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return its exit status.

    The ``heron`` console script is :func:`run`. Only the parser is built before a command
    runs; each handler imports the library code it calls, so ``heron --version`` or
    ``heron study status`` loads no more than it needs.
    """
    return _dispatch(build_parser().parse_args(argv))


def _is_daemon(args: argparse.Namespace) -> bool:
    return getattr(args, "node_cmd", None) == "run" or getattr(args, "agg_cmd", None) == "run"


def _dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; a heron error is printed on one line (exit status 2)."""
    logging.basicConfig(level=logging.INFO if args.verbose or _is_daemon(args) else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not _is_reported(exc):
            raise
        print(f"heron: error: {exc}", file=sys.stderr)
        return 2


_CLIENT_COMMANDS = frozenset({"status", "list", "submit", "results"})
"""``heron study`` commands that are gRPC clients of the aggregator and nothing else."""


def run() -> None:
    """The ``heron`` console script: the command of ``sys.argv``, then exit with its status.

    A command that is only a gRPC client of the aggregator (``heron study status``, ``list``,
    ``submit``, ``results``) ends with ``os._exit`` once its output and logs are flushed: the
    interpreter's teardown of gRPC's modules and threads costs about 25 ms, a sixth of the
    start-up budget of a command a coordinator may run in a loop, and such a command has
    nothing left to clean up (its files are closed, its channel too). Every other command
    exits normally.
    """
    args = build_parser().parse_args()
    code = _dispatch(args)
    if getattr(args, "study_cmd", None) in _CLIENT_COMMANDS:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
