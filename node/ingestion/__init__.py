"""Site data in: read hospital exports, validate every row, pseudonymise, store snapshots."""

from node.ingestion.ingest import IngestReport, ingest, validate_folder
from node.ingestion.store import Store, open_store, write_snapshot

__all__ = ["IngestReport", "Store", "ingest", "open_store", "validate_folder", "write_snapshot"]
