"""A Keras 3 layer around a TF-Hub / Kaggle SavedModel.

tensorflow_hub's `hub.KerasLayer` is a tf_keras layer and fails inside Keras 3 models, so this layer
loads the module with `hub.load` and tracks the module's own `tf.Variable`s as Keras variables (a
Keras TF-backend variable wraps an existing `tf.Variable` rather than copying it), which makes the
module trainable and its weights part of the model's checkpoints.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tlkeras")
class HubModuleLayer(keras.layers.Layer):
    """Calls a SavedModel as a layer.

    Args:
        handle: str. A local SavedModel folder, or a TF-Hub / Kaggle URL (needs the network once).
        signature: str. A signature to call instead of the module's `__call__`. Defaults to None.
        output_key: str. The key to pick when the module returns a dict. Defaults to the first
            of "default", "pooled_output", "output_0", else the only value.

    Example:
    >>> layer = HubModuleLayer("path/to/saved_model")
    >>> model = keras.Sequential([keras.Input((224, 224, 3)), layer, keras.layers.Dense(2)])
    """

    def __init__(self, handle, signature=None, output_key=None, **kwargs):
        super().__init__(**kwargs)
        import tensorflow_hub as hub

        self.handle = str(handle)
        self.signature = signature
        self.output_key = output_key
        self._module = hub.load(self.handle)
        self._fn = self._module.signatures[signature] if signature else self._module
        for variable in _module_variables(self._module, self._fn):
            tracked = keras.Variable(
                initializer=variable, trainable=variable.trainable, dtype=variable.dtype,
                shape=variable.shape, name=variable.name.replace("/", "_").replace(":", "_"),
            )
            self._track_variable(tracked)
        self.built = True

    def call(self, inputs, training=False):
        if self.signature:
            outputs = self._fn(inputs)
        else:
            try:
                outputs = self._fn(inputs, training=training)
            except (TypeError, ValueError):  # modules saved without a `training` argument
                outputs = self._fn(inputs)
        if isinstance(outputs, dict):
            key = self.output_key or next(
                (k for k in ("default", "pooled_output", "output_0") if k in outputs), None
            ) or next(iter(outputs))
            outputs = outputs[key]
        return outputs

    def get_config(self):
        return {**super().get_config(), "handle": self.handle, "signature": self.signature,
                "output_key": self.output_key}


def _module_variables(module, fn) -> list:
    """The module's variables: TF-Hub modules list them; plain SavedModels only through the concrete
    functions that use them."""
    if hasattr(module, "variables"):
        return list(module.variables)
    found = {}
    call = fn if hasattr(fn, "concrete_functions") else fn.__call__  # a restored tf.function
    functions = getattr(call, "concrete_functions", None) or [call]
    for concrete in functions:
        for variable in getattr(concrete, "variables", ()):
            found[id(variable)] = variable
    return list(found.values())
