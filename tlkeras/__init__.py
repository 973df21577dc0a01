"""tlkeras: transfer learning with Keras 3.

The package imports nothing heavy at start-up: `tlkeras.registry` is pure Python and pandas, while
TensorFlow and Keras are imported by `tlkeras.backbones`, `tlkeras.recipes`, `tlkeras.export` and
`tlkeras.serve` when they are used.
"""

__version__ = "0.1.0"
