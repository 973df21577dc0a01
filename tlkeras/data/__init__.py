"""Recipe data: reading class folders and tables into `Examples`, splitting and fingerprinting them.
Datasets (tf.data) are built by the input kinds (`tlkeras.inputs`). No TensorFlow import here.

Example:
>>> train = load_examples("flowers/train", task="classification")
>>> train, val = split_examples(train, fraction=0.2, seed=0)
>>> kind = tlkeras.inputs.get(train.kind)
>>> ok, bad = kind.check(train.inputs, skip=True)
"""

from tlkeras.data.examples import Examples
from tlkeras.data.reading import load_examples, read_table
from tlkeras.data.splits import fingerprint, fold_indices, split_examples, stratified_sample

__all__ = ["Examples", "fingerprint", "fold_indices", "load_examples", "read_table", "split_examples",
           "stratified_sample"]
