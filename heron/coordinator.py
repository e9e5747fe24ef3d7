"""Coordinator side: sign studies and talk to the aggregator's Coordinator API over mTLS."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from heron.errors import HeronError
from protocol.credentials import credential_files
from protocol.errors import ProtocolError
from protocol.tls import channel_credentials, channel_options
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc

if TYPE_CHECKING:  # signing and study parsing load yaml and more: only the commands that
    from protocol.signing import SignedStudy  # sign import them (heron study status starts
    from protocol.study import Study  # fast)

__all__ = ["CoordinatorClient", "load_study", "sign_study_file"]

LONG_POLL_S = 25.0
"""How long one ``WaitStudy`` call asks the aggregator to wait (it may answer sooner)."""
_RETRY_S = 0.1  # pause before asking again when the aggregator answered at once


def load_study(study_path: Path) -> Study:
    """Read and validate a study document; errors name the file and the field."""
    from protocol.study import parse_study

    try:
        return parse_study(study_path.read_bytes())
    except OSError as exc:
        raise HeronError(f"{study_path}: {exc.strerror}") from None
    except ProtocolError as exc:
        raise HeronError(f"{study_path}: {exc}") from None


def sign_study_file(study_path: Path, key_path: Path, out_path: Path) -> SignedStudy:
    """Parse a study document, sign it with a coordinator key and write the envelope."""
    from protocol.keys import load_private_key
    from protocol.signing import sign_study

    study = load_study(study_path)
    signed = sign_study(study, load_private_key(key_path))
    signed.to_file(out_path)
    return signed


def _status_dict(s: pb.StudyStatus) -> dict[str, Any]:
    return {
        "study_id": s.study_id, "status": s.status, "title": s.title,
        "submitted_at": s.submitted_at, "completed_at": s.completed_at,
        "sites": {x.site_id: {"state": x.state, "reason": x.reason, "updated_at": x.updated_at}
                  for x in s.sites},
    }


class CoordinatorClient:
    """A client of the aggregator's Coordinator service.

    Parameters
    ----------
    target
        Aggregator address, ``host:port`` (host must match the aggregator certificate).
    credentials_dir
        Folder with the coordinator's cert.pem, key.pem and ca.pem.
    """

    def __init__(self, target: str, credentials_dir: Path, timeout_s: float = 30.0) -> None:
        creds = credential_files(credentials_dir)
        self._credentials_dir = Path(credentials_dir)
        self._channel = grpc.secure_channel(target, channel_credentials(creds),
                                            options=channel_options())
        self._stub = pb_grpc.CoordinatorStub(self._channel)
        self.timeout_s = timeout_s

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                self._check_credentials()
            raise HeronError(f"aggregator: {exc.code().name}: {exc.details()}") from None

    def _check_credentials(self) -> None:
        """Say what is wrong with our credentials, if anything, when the aggregator is unreachable.

        The channel only reads the PEM files (so a command starts without X.509 code); a key
        that does not match its certificate, or a certificate from another CA, shows up as a
        failed handshake, which this turns into the precise reason.
        """
        from protocol.pki import load_credentials

        try:
            load_credentials(self._credentials_dir)
        except ProtocolError as exc:
            raise HeronError(f"coordinator credentials: {exc}") from None

    def submit(self, signed: SignedStudy) -> str:
        """Submit a signed study; returns its id."""
        return self._call(self._stub.SubmitStudy, signed.to_proto()).study_id

    def status(self, study_id: str) -> dict[str, Any]:
        """Status of a study with per-site states."""
        return _status_dict(self._call(self._stub.GetStatus, pb.StudyRef(study_id=study_id)))

    def results(self, study_id: str) -> dict[str, Any]:
        """results.json of a completed study."""
        reply = self._call(self._stub.GetResults, pb.StudyRef(study_id=study_id))
        if not reply.results_json:
            raise HeronError(f"study {study_id} has no results yet (status {reply.status})")
        return json.loads(reply.results_json)

    def list_studies(self) -> list[dict[str, Any]]:
        """All studies the aggregator knows."""
        reply = self._call(self._stub.ListStudies, pb.ListStudiesRequest())
        return [_status_dict(s) for s in reply.studies]

    def list_sites(self) -> list[dict[str, Any]]:
        """Sites in the aggregator's registry."""
        reply = self._call(self._stub.ListSites, pb.ListSitesRequest())
        return [{"site_id": s.site_id, "connected": s.connected,
                 "software_version": s.software_version, "last_seen": s.last_seen,
                 "ingested_at": s.ingested_at}
                for s in reply.sites]

    def wait_for_sites(self, site_ids: set[str], timeout_s: float,
                       progress: Callable[[int, int], None] | None = None) -> None:
        """Block until every given site is connected."""
        deadline = time.monotonic() + timeout_s
        while True:
            connected = {s["site_id"] for s in self.list_sites() if s["connected"]}
            if progress:
                progress(len(connected & site_ids), len(site_ids))
            if site_ids <= connected:
                return
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(site_ids - connected))
                raise HeronError(f"sites did not connect within {timeout_s:.0f} s: {missing}")
            time.sleep(0.1)

    def wait_for_completion(self, study_id: str, timeout_s: float,
                            progress: Callable[[dict[str, Any]], None] | None = None
                            ) -> dict[str, Any]:
        """Wait until the study is no longer running; returns its final status.

        The aggregator pushes completion: each ``WaitStudy`` call returns as soon as the study
        ends (or after at most :data:`LONG_POLL_S`, when ``progress`` sees the status and the
        client asks again). An aggregator without ``WaitStudy`` is polled every 0.1 s.

        Raises
        ------
        HeronError
            When the study is still running after ``timeout_s`` seconds, or a call fails.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            wait = max(0.0, min(deadline - time.monotonic(), LONG_POLL_S))
            started = time.monotonic()
            try:
                reply = self._stub.WaitStudy(
                    pb.WaitStudyRequest(study_id=study_id, timeout_ms=int(wait * 1000)),
                    timeout=wait + self.timeout_s)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # an older aggregator
                    return self._poll_for_completion(study_id, deadline, timeout_s, progress)
                raise HeronError(f"aggregator: {exc.code().name}: {exc.details()}") from None
            status = _status_dict(reply)
            if progress:
                progress(status)
            if status["status"] != "running":
                return status
            if time.monotonic() >= deadline:
                raise HeronError(f"study {study_id} still running after {timeout_s:.0f} s")
            if time.monotonic() - started < min(wait, _RETRY_S):
                time.sleep(_RETRY_S)  # answered at once (the aggregator's waiters are busy)

    def _poll_for_completion(self, study_id: str, deadline: float, timeout_s: float,
                             progress: Callable[[dict[str, Any]], None] | None
                             ) -> dict[str, Any]:
        while True:
            status = self.status(study_id)
            if progress:
                progress(status)
            if status["status"] != "running":
                return status
            if time.monotonic() > deadline:
                raise HeronError(f"study {study_id} still running after {timeout_s:.0f} s")
            time.sleep(_RETRY_S)
