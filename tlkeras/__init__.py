"""tlkeras: transfer learning with Keras 3.

The package imports nothing heavy at start-up: `tlkeras.registry` is pure Python and pandas, while
TensorFlow and Keras are imported by `tlkeras.backbones`, `tlkeras.recipes`, `tlkeras.export` and
`tlkeras.serve` when they are used.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `tlkeras.fit` loads the training machinery only when it is called for.
    if name in ("fit", "FitResult"):
        from tlkeras import easy

        return getattr(easy, name)
    raise AttributeError(f"module 'tlkeras' has no attribute {name!r}")
