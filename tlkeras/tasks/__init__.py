"""The table of tasks. Everything a task means (head activation, loss and metrics, serving outputs,
evaluator) lives in its own module here; the rest of tlkeras asks `get(name)` instead of branching.

Example:
>>> from tlkeras import tasks
>>> tasks.get("multilabel").activation
'sigmoid'
>>> tasks.NAMES
('classification', 'multilabel', 'regression')
"""

from __future__ import annotations

from tlkeras.errors import TlkerasError
from tlkeras.suggest import did_you_mean
from tlkeras.tasks.base import Task
from tlkeras.tasks.classification import Classification
from tlkeras.tasks.multilabel import Multilabel
from tlkeras.tasks.regression import Regression

TASKS: dict[str, Task] = {task.name: task for task in (Classification(), Multilabel(), Regression())}
NAMES = tuple(TASKS)


class UnknownTaskError(TlkerasError, ValueError):
    """A task name that is not in the table."""


def get(name: str) -> Task:
    """Task: the task called `name`, or an error with a "did you mean"."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise UnknownTaskError(f"unknown task{did_you_mean(str(name), NAMES)}: use one of {', '.join(NAMES)}. "
                               f"Received: task={name!r}") from None


__all__ = ["NAMES", "TASKS", "Task", "UnknownTaskError", "get"]
