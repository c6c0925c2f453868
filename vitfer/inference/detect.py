"""Face detection and crops, kept importable here: the code lives in :mod:`vitfer.data.faces`
(training and prediction share it)."""
from vitfer.data.faces import *  # noqa: F401,F403
from vitfer.data.faces import __all__  # noqa: F401
