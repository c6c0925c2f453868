"""``vitfer demo``: a local web page (Gradio) to try checkpoints on photos and webcam snapshots.

    from vitfer.demo import launch
    app, url = launch(["a.safetensors", "b.safetensors"])    # one column a model, on 127.0.0.1
    app.close()

:mod:`vitfer.demo.core` computes what the page shows (faces, labels, probabilities, attention)
without Gradio; :mod:`vitfer.demo.examples` draws the example photos (synthetic faces);
:mod:`vitfer.demo.app` builds the page and needs the ``demo`` extra
(``pip install 'vitfer[demo]'``). This package sits above :mod:`vitfer.inference` and
:mod:`vitfer.analysis`; nothing below it imports it.
"""
from .app import DEMO_HINT, build_app, import_gradio, launch
from .core import MAX_FACES, MAX_FILE_BYTES, MAX_SIDE, DemoError, analyse, load_models, read_photo

__all__ = ["DEMO_HINT", "MAX_FACES", "MAX_FILE_BYTES", "MAX_SIDE", "DemoError", "analyse", "build_app",
           "import_gradio", "launch", "load_models", "read_photo"]
