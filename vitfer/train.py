"""Fine-tuning and evaluation (kept for compatibility: the code lives in :mod:`vitfer.engine`).

    from vitfer.train import FinetuneConfig, finetune
"""
from vitfer.engine import *  # noqa: F401,F403
from vitfer.engine import __all__  # noqa: F401
from vitfer.engine.loop import lr_at  # noqa: F401
