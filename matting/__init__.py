"""FADE matting: an image-matting framework built around the FADE upsampling operator.

Concerns live in one sub-package each:

- ``matting.upsamplers``: FADE and its peers behind one interface and one registry.
- ``matting.models``: the encoder-decoder matting networks (``build_model``).
- ``matting.losses``: trimap-aware training losses.
- ``matting.metrics``: the official Composition-1k SAD/MSE/Grad/Conn.
- ``matting.data``: Composition-1k reading, composition, training datasets, the demo set.
- ``matting.engine``: training/evaluation loops, checkpoints, logging, shared inference code.

Command-line entry points: ``python -m matting.train``, ``matting.evaluate``, ``matting.infer``,
``matting.export``, ``matting.metrics``, ``matting.data.compose_test``, ``matting.data.make_demo``.
"""

__version__ = "0.1.0"
