"""``vitfer models [PATTERN] [--family F] [--json]``: the registered models."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional


def _models_rows(pattern: Optional[str], family: Optional[str]) -> list[dict[str, Any]]:
    from vitfer.models.registry import list_aliases, get_model_spec, list_models
    from vitfer.models.families import build_meta, import_all_families

    import_all_families()
    rows = []
    for name in list_models(pattern, family=family):
        spec = get_model_spec(name)
        model = build_meta(name)
        n = sum(p.numel() for p in model.parameters())
        cfg = spec.pretrained_cfg
        rows.append(
            {
                "name": name,
                "family": spec.family,
                "params": n,
                "input_size": list(cfg.input_size),
                "pretrained": cfg.hf_hub_id,
                "aliases": sorted(a for a, t in list_aliases().items() if t == name),
            }
        )
    return rows


def _cmd_models(args: argparse.Namespace) -> int:
    rows = _models_rows(args.pattern, args.family)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no models match", file=sys.stderr)
        return 1
    w = max(len(r["name"]) for r in rows)
    print(f"{'name':<{w}}  {'family':<10}  {'params (M)':>10}  {'input':<11}  default pretrained source")
    for r in rows:
        inp = "x".join(str(s) for s in r["input_size"])
        alias = f"  (alias: {', '.join(r['aliases'])})" if r["aliases"] else ""
        source = f"hf-hub:{r['pretrained']}" if r["pretrained"] else "none (trained from scratch)"
        print(f"{r['name']:<{w}}  {r['family']:<10}  {r['params'] / 1e6:>10.2f}  {inp:<11}  {source}{alias}")
    return 0


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models (parameters, default pretrained source)")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style name filter, e.g. 'crossvit_*'")
    p.add_argument("--family", default=None, choices=("vit", "convit", "crossvit", "vit_hybrid", "resnet", "vgg"),
                   help="only this family")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_models)
