"""``vitfer report``: figures and a report (markdown + self-contained HTML) of run folders."""
from __future__ import annotations

import argparse
from pathlib import Path

from vitfer.cli._common import positive_int
from vitfer.cli._logging import progress_to_stdout


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="figures (curves, confusion, t-SNE, attention) and a report of run folders",
        description="Write figures (PNG, and a PDF copy of each) and report.md / report.html for RUN_DIR ...: "
        "learning curves, confusion matrices (counts and row-normalised), t-SNE of the pre-logit test features "
        "(2-D and 3-D), attention on sample test faces (rollout for ViT and the hybrid; rollout and attention "
        "distances for ConViT; class-token cross-attention for CrossViT; Grad-CAM for CNNs, at the deepest layer "
        "whose map is at least 6x6), for ConViT what its GPSA gates learned (a layer x head table, a figure, "
        "TAG_gpsa_gates.json and a verdict on the ConViT paper's finding that later layers become less "
        "positional; from the checkpoint alone, also with --no-attention) and, for several runs, the overlaid "
        "curves and a comparison table in the study's format. A cross-validation folder (fold-K/ and "
        "summary.json) is reported pooled and fold by fold. Every figure is titled with model, dataset, split "
        "and test accuracy. Needs the plots extra: pip install 'vitfer[plots]'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="finished run folders (vitfer finetune / study) or cross-validation folders")
    p.add_argument("--out", default=None,
                   help="report folder (default: RUN_DIR/report for one run, ./report for several)")
    p.add_argument("--samples", type=positive_int, default=7, help="test faces in the attention figure (one an expression, in turn)")
    p.add_argument("--data-dir", default=None, help="the dataset folder, if it moved since the runs")
    p.add_argument("--device", default="cpu", help="cpu, auto, cuda or cuda:N")
    p.add_argument("--no-tsne", action="store_true", help="leave out the t-SNE plots")
    p.add_argument("--no-attention", action="store_true", help="leave out the attention figures")
    p.add_argument("--cam-layer", default=None, metavar="NAME",
                   help="Grad-CAM layer, a module name such as layer3 or features.22; None: the deepest layer "
                   "whose map is at least 6x6 at the run's input size")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from vitfer.analysis.report import write_report

    if args.verbose:
        progress_to_stdout("vitfer.analysis")
    out = args.out or (str(Path(args.runs[0]) / "report") if len(args.runs) == 1 else "report")
    res = write_report(args.runs, out, samples=args.samples, device=args.device, data_dir=args.data_dir,
                       tsne=not args.no_tsne, attention=not args.no_attention, cam_layer=args.cam_layer)
    print(f"{len(res['figures'])} figures in {Path(out)}")
    for f in res["figures"]:
        print(f"  {f}")
    if res["data"]:
        print("data: " + ", ".join(str(f) for f in res["data"]))
    print(f"report: {res['markdown']} and {res['html']}")
    return 0
