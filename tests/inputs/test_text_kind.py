"""The text input kind: datasets through a tokenizer, specs, signatures."""

import numpy as np

from tlkeras import inputs
from tlkeras.inputs import InputSpec

TEXT = inputs.get("text")


def test_text_dataset_runs_a_keras_hub_preprocessor():
    import keras_hub

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was", "great"]
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer=keras_hub.models.BertTokenizer(vocabulary=vocab), sequence_length=6)
    spec = InputSpec("text", sequence_length=6)
    ds = TEXT.dataset(["the movie was great", "great"], np.array([1, 0]), spec, 2, preprocessor=preprocessor)
    x, y = next(iter(ds))
    np.testing.assert_array_equal(x["token_ids"].numpy(), [[2, 5, 6, 7, 8, 3], [2, 8, 3, 0, 0, 0]])
    np.testing.assert_array_equal(x["padding_mask"].numpy()[1], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(y.numpy(), [1, 0])
    plain = next(iter(TEXT.dataset(["a", "b", "c"], None, spec, 2)))
    assert plain.numpy().tolist() == [b"a", b"b"]
