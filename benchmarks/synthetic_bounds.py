"""The synthetic faces' ceiling and floor: how hard the built-in task is, measured.

    python benchmarks/synthetic_bounds.py [--n-train 8000] [--n-test 2000] [--size 48]

- ceiling: classifiers that see the drawn expression parameters of each face
  (:func:`vitfer.data.synthetic.expression_parameters`: class values + the subject's resting bias +
  per-sample noise), which is all the picture can tell of its class; pose, lighting and drawing
  only hide it further. No model of the images should beat it.
- floor: a linear classifier (multinomial logistic regression) on the raw pixels, standardised per
  pixel, the regularisation picked on a held-out part. The task is meant to need more than that.

Train faces use seed 0, test faces seed 1 (other subjects' draws, other samples), as the main job's
held-out split does not: its test faces come from the same 40 subjects. Needs scikit-learn
(``pip install 'vitfer[svm]'``).
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-train", type=int, default=8000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--size", type=int, default=48)
    args = ap.parse_args()
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as e:
        raise SystemExit(f"this benchmark needs scikit-learn: pip install 'vitfer[svm]' ({e})")
    from vitfer.data.synthetic import SyntheticFaces, expression_parameters

    rows = []
    ptr, ytr = expression_parameters(args.n_train, seed=0)
    pte, yte = expression_parameters(args.n_test, seed=1)
    for name, clf in (
        ("logistic regression on the 9 parameters", make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))),
        ("gradient-boosted trees on the 9 parameters", HistGradientBoostingClassifier(random_state=0)),
    ):
        t = time.time()
        clf.fit(ptr, ytr)
        rows.append(("ceiling", name, float((clf.predict(pte) == yte).mean()), time.time() - t))

    t = time.time()
    xtr = SyntheticFaces(args.n_train, image_size=args.size, seed=0).images.reshape(args.n_train, -1).numpy() / 255.0
    xte = SyntheticFaces(args.n_test, image_size=args.size, seed=1).images.reshape(args.n_test, -1).numpy() / 255.0
    ytr_img = np.arange(args.n_train) % 7
    yte_img = np.arange(args.n_test) % 7
    scaler = StandardScaler().fit(xtr)
    xtr, xte = scaler.transform(xtr), scaler.transform(xte)
    n_fit = int(0.85 * len(xtr))
    best = None
    for c in (1e-4, 1e-3, 1e-2):
        clf = LogisticRegression(C=c, max_iter=300).fit(xtr[:n_fit], ytr_img[:n_fit])
        val = float((clf.predict(xtr[n_fit:]) == ytr_img[n_fit:]).mean())
        if best is None or val > best[0]:
            best = (val, c)
    clf = LogisticRegression(C=best[1], max_iter=300).fit(xtr, ytr_img)
    rows.append(("floor", f"logistic regression on the {args.size}x{args.size} pixels (C={best[1]:g})",
                 float((clf.predict(xte) == yte_img).mean()), time.time() - t))

    print(f"synthetic faces, {args.n_train} train / {args.n_test} test (seed 0 / seed 1), 7 classes, chance 0.143\n")
    print("| bound | classifier | test accuracy | seconds |")
    print("|---|---|---|---|")
    for bound, name, acc, sec in rows:
        print(f"| {bound} | {name} | {acc:.3f} | {sec:.0f} |")


if __name__ == "__main__":
    main()
