"""Make the README's example figures (docs/figures/*.png) from vitfer's synthetic faces.

    python examples/make_readme_figures.py [--out docs/figures] [--work /tmp/vitfer-readme-figures]

CK+48 and JAFFE images may not be shipped, so the figures the README shows are those of
`vitfer report` on runs trained here, on a CPU, on `SyntheticFaces` (procedural cartoon faces of
the seven expressions), with the `scratch` recipe's settings for them (AdamW 1e-3, cosine, no
augmentation) but far fewer faces and steps: a ResNet-18-D (Grad-CAM), the recipe's hybrid
vit_tiny_r18d_48 (attention rollout, attention distances), a small ConViT (GPSA gating; from
scratch it stays near chance, see the README) and a 3-fold cross-validation of the ResNet. It took
about 25 minutes on this project's 2-core CPU while other jobs kept it busy (load about 5). The PNGs are the report's own (it writes a PDF beside each).
"""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from vitfer.analysis import write_report
from vitfer.engine import FinetuneConfig, finetune, run_folds

# report figure -> README name
SHIPPED = {
    "runs/curves_overlay.png": "curves_overlay.png",
    "runs/resnet18d_confusion.png": "confusion.png",
    "runs/resnet18d_tsne2d.png": "tsne2d.png",
    "runs/resnet18d_attention.png": "attention_gradcam.png",
    "runs/hybrid_attention.png": "attention_rollout.png",
    "runs/hybrid_attention_distance.png": "attention_distance.png",
    "runs/convit_gpsa_gating.png": "gpsa_gating.png",
    "cv/cv_folds.png": "cv_folds.png",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "figures"))
    p.add_argument("--work", default="/tmp/vitfer-readme-figures")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(args.work)
    def cfg(model: str, n: int, epochs: int, out: str, **kw) -> FinetuneConfig:
        fields = dict(model=model, dataset="synthetic", synthetic_n=n, img_size=48, epochs=epochs, warmup_steps=20,
                      val_size=0.1, seed=0, device="cpu", amp="none", overwrite=True, out_dir=str(work / out))
        return FinetuneConfig.from_recipe("scratch", **{**fields, **kw})

    runs = [
        cfg("resnet18d", 3000, 3, "resnet18d"),
        cfg("vit_tiny_r18d_48", 3000, 3, "hybrid"),
        cfg("convit_tiny", 1400, 2, "convit", patch_size=8, model_overrides={"depth": 4, "local_up_to_layer": 2}),
    ]
    for c in runs:
        finetune(c)
    run_folds(cfg("resnet18d", 1200, 6, "cv", split="kfold", n_folds=3, val_size=0.0, warmup_steps=10, batch_size=32))
    write_report([c.out_dir for c in runs], work / "report" / "runs", samples=7)
    write_report([work / "cv"], work / "report" / "cv", tsne=False, attention=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for src, name in SHIPPED.items():
        shutil.copy(work / "report" / src, out / name)
        print(f"{out / name}: {(out / name).stat().st_size // 1024} KB")
    shutil.copy(work / "report" / "runs" / "report.md", work / "report-runs.md")


if __name__ == "__main__":
    main()
