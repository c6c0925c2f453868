"""``vitfer convert --model NAME [--from hub|PATH|hf-hub:REPO[@REV]] --out DIR``: timm weights to vitfer checkpoints."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _cmd_convert(args: argparse.Namespace) -> int:
    from vitfer.weights.checkpoint import check_rebuildable, describe_state_dict
    from vitfer.models.families import model_spec
    from vitfer.weights.hub import HF_PREFIX, fetch_state_dict, pretrained_tag
    from vitfer.weights.io import atomic_save_safetensors, sha256_file
    from vitfer.weights.manifest import update_manifest_entry

    spec = model_spec(args.model)
    tag = pretrained_tag(args.model)
    # "arch.tag" keeps its tag: it selects the hub weights and names the output and manifest entry.
    name = f"{spec.name}.{tag}" if tag else spec.name
    src = args.source
    if src == "hub":
        source: Any = True
    elif src.startswith(HF_PREFIX):
        source = src
    else:
        source = Path(src)
    res = fetch_state_dict(name, source)
    if res.source.startswith(HF_PREFIX):
        src_info = {k: res.info.get(k) for k in ("hub_repo", "revision", "commit", "filename", "sha256")}
        src_info["layout"] = res.layout
    else:
        path = Path(res.source)
        src_info = {"file": path.name, "sha256": sha256_file(path) if path.is_file() else None, "layout": res.layout}
    info = {"source": res.source, "source_info": src_info, "base": res.base}
    if tag:
        info["tag"] = tag
    meta = describe_state_dict(spec.name, res.state_dict, info)
    check_rebuildable(meta, res.state_dict)
    out_dir = Path(args.out)
    out = out_dir / f"{name}.safetensors"
    atomic_save_safetensors(res.state_dict, out, {"vitfer": json.dumps(meta, sort_keys=True), "format": "pt"})
    record = {
        "file": out.name,
        "sha256": sha256_file(out),
        "bytes": out.stat().st_size,
        "source": res.source,
        "source_info": src_info,
        "num_classes": meta["num_classes"],
        "vitfer_version": meta["vitfer_version"],
    }
    manifest = Path(args.manifest) if args.manifest else out_dir / "manifest.json"
    entry = update_manifest_entry(manifest, name, record)
    print(f"wrote {out} ({record['bytes'] / 1e6:.1f} MB, sha256 {record['sha256'][:16]}...)")
    print(f"manifest {manifest}, entry {name}:")
    print(json.dumps(entry, indent=2, sort_keys=True))
    return 0


def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert pretrained weights into a self-describing vitfer checkpoint (DIR/NAME.safetensors)",
        description="Fetch (hub) or read (PATH: .safetensors, .pth/.bin, .npz) a checkpoint of MODEL, convert it "
        "to vitfer's layout, check it, and write DIR/MODEL.safetensors with vitfer metadata (vitfer.load reads it). "
        "The manifest (DIR/manifest.json unless --manifest) records the source and output hashes.",
    )
    p.add_argument("--model", required=True, help="registered model name (see `vitfer models`)")
    p.add_argument("--from", dest="source", default="hub",
                   help="'hub' (the model's default hub checkpoint, the default), 'hf-hub:REPO[@REV]', or a local file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--manifest", default=None, help="manifest to update (default: OUT/manifest.json)")
    p.set_defaults(func=_cmd_convert)
