"""``vitfer manifest [--out weights/manifest.json]``: the weights manifest from the registry."""
from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_manifest(args: argparse.Namespace) -> int:
    from vitfer.weights.manifest import build_manifest, read_manifest, write_manifest

    path = Path(args.out)
    manifest = build_manifest(read_manifest(path))
    write_manifest(manifest, path)
    print(f"wrote {path}: {len(manifest['models'])} models "
          f"(families present {manifest['families_present']}, missing {manifest['families_missing']})")
    return 0


def add_manifest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="(re)generate the weights manifest from the registry")
    p.add_argument("--out", default="weights/manifest.json", help="manifest path (default: weights/manifest.json)")
    p.set_defaults(func=_cmd_manifest)
