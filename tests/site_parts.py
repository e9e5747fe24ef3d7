"""Cut a Parquet site folder into folders of whole patients (for tests of ingestion in parts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def split_site(folder: Path, out: Path, parts: int) -> list[Path]:
    """The site folder cut into ``parts`` folders of whole patients (patient ``i`` goes to part
    ``i % parts``), each with every table, rows following their patient or infusion."""
    tables = {p.stem: pq.read_table(p) for p in folder.glob("*.parquet")}
    pids = tables["patients"]["patient_id"]
    inf = tables["infusions"]
    folders = []
    for k in range(parts):
        mine = pids.filter(pa.array(np.arange(len(pids)) % parts == k))
        keep_inf = inf.filter(pc.is_in(inf["patient_id"], value_set=mine))
        dest = out / f"part{k}"
        dest.mkdir(parents=True)
        for name, table in tables.items():
            if name == "patients":
                table = table.filter(pc.is_in(table["patient_id"], value_set=mine))
            elif name == "infusions":
                table = keep_inf
            else:
                table = table.filter(pc.is_in(table["infusion_id"],
                                              value_set=keep_inf["infusion_id"]))
            pq.write_table(table, dest / f"{name}.parquet")
        folders.append(dest)
    return folders
