"""Regenerate the committed gRPC/protobuf code from the ``.proto`` files.

Run ``python -m protocol.codegen`` from the repository root. ``--check`` regenerates into a
temporary folder and exits non-zero when the committed files differ (used by the test suite).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = Path("protocol") / "v1"


def proto_files() -> list[Path]:
    """Return the ``.proto`` files relative to the repository root."""
    return sorted(p.relative_to(ROOT) for p in (ROOT / PROTO_DIR).glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Generate Python code for every proto into ``out_dir``; return the written files."""
    from grpc_tools import protoc  # imported lazily: only needed by developers and CI

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(ROOT / p) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    return sorted((out_dir / PROTO_DIR).glob("*_pb2*.py*"))


def stale_files() -> list[str]:
    """Names of generated files that differ from a fresh generation (empty when up to date)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for f in fresh:
            committed = ROOT / PROTO_DIR / f.name
            if not committed.exists() or not filecmp.cmp(f, committed, shallow=False):
                stale.append(f.name)
        fresh_names = {f.name for f in fresh}
        stale += [
            p.name for p in (ROOT / PROTO_DIR).glob("*_pb2*.py*") if p.name not in fresh_names
        ]
        return sorted(stale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when generated code is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated code: " + ", ".join(stale) + " (run python -m protocol.codegen)")
            return 1
        print("generated code is up to date")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for f in generate(Path(tmp)):
            shutil.copyfile(f, ROOT / PROTO_DIR / f.name)
            print(f"wrote {PROTO_DIR / f.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
