"""The task table: each task's activation, loss, serving outputs and evaluator, in one place."""

import numpy as np
import pytest
import tensorflow as tf

from tlkeras import tasks
from tlkeras.recipes.heads import build_head


def test_the_table_names_every_task_once_and_refuses_unknown_ones():
    assert tasks.NAMES == ("classification", "multilabel", "regression")
    assert [tasks.get(name).activation for name in tasks.NAMES] == ["softmax", "sigmoid", None]
    with pytest.raises(tasks.UnknownTaskError, match="did you mean 'regression'"):
        tasks.get("regresion")


@pytest.mark.parametrize("name", tasks.NAMES)
def test_each_task_head_loss_and_outputs_fit_together(name):
    task = tasks.get(name)
    targets = {"classification": np.array([0, 1, 2, 1]), "multilabel": np.eye(3, dtype="float32")[[0, 1, 2, 1]],
               "regression": np.array([[0.5, 1.0]] * 4, dtype="float32")}[name]
    labels = ["a", "b", "c"] if name != "regression" else ["x", "y"]
    n_outputs = task.n_outputs(labels, targets)
    head = build_head(5, name, n_outputs)
    loss, metrics = task.loss_and_metrics()
    head.compile(optimizer="sgd", loss=loss, metrics=metrics)
    history = head.fit(np.ones((4, 5), "float32"), task.keras_targets(targets, n_outputs, False), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    outputs = task.postprocess(tf.constant(head.predict(np.ones((2, 5)), verbose=0)), labels, 0.5)
    assert set(outputs) == set(task.outputs)
    scores = head.predict(np.ones((4, 5)), verbose=0)
    metrics, plots = task.score(targets, scores, labels, 0.5)
    assert task.headline in metrics and metrics["num_samples"] == 4


def test_multilabel_postprocess_joins_predicted_names():
    scores = tf.constant([[0.9, 0.1, 0.6], [0.2, 0.3, 0.1], [0.5, 0.5, 0.5]])
    out = tasks.get("multilabel").postprocess(scores, ["a", "b", "c"], threshold=0.5)
    assert out["predicted"].numpy().tolist() == [[True, False, True], [False, False, False], [True, True, True]]
    assert [s.decode() for s in out["label"].numpy()] == ["a,c", "", "a,b,c"]
