"""Build a vitfer model and classify a batch (the README's first command until fine-tuning lands)."""
from __future__ import annotations

import torch

from vitfer.models import create_model, list_models


def main() -> None:
    print(f"{len(list_models())} models: {', '.join(list_models())}")
    model = create_model("vit_tiny_patch16_224", num_classes=7, img_size=64).eval()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        probs = model(x).softmax(-1)
    print(f"{model.model_name}: {model.num_params() / 1e6:.1f}M parameters, input {tuple(x.shape)}")
    print("class probabilities of 4 random images:\n", probs)


if __name__ == "__main__":
    main()
