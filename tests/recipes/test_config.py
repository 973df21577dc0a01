"""The recipe schema: did-you-mean keys, typed values, ranges, overrides, relative paths."""

import pytest
import yaml
from conftest import TINY_CNN

from tlkeras.recipes import load_recipe, parse_recipe
from tlkeras.schema import SchemaError


def test_unknown_key_gets_a_did_you_mean():
    with pytest.raises(SchemaError, match="unknown key 'schedul'; did you mean 'schedule'"):
        parse_recipe({**BASE, "schedul": {"epochs": 3}})
    with pytest.raises(SchemaError, match="unknown key 'data.batchsize'; did you mean 'batch_size'"):
        parse_recipe({**BASE, "data": {"train": "images", "batchsize": 8}})


def test_wrong_type_names_the_key():
    with pytest.raises(SchemaError, match="'schedule.epochs' must be int. Received: schedule.epochs='ten'"):
        parse_recipe({**BASE, "schedule": {"epochs": "ten"}})
    with pytest.raises(SchemaError, match="schedule.strategy"):
        parse_recipe(BASE, ["schedule.strategy=fine_tune"])


def test_overrides_set_nested_values_and_leave_the_input_alone():
    raw = {**BASE, "schedule": {"epochs": 10}, "head": None}
    recipe = parse_recipe(raw, ["schedule.epochs=3", "data.image_size=[40, 48]", "head.hidden_units=[8]",
                                "augment.flip=horizontal", "schedule.learning_rate=1e-2"])
    assert recipe.schedule.epochs == 3 and recipe.data.image_size == (40, 48)
    assert recipe.head.hidden_units == (8,) and recipe.augment.flip == "horizontal"
    assert recipe.schedule.learning_rate == 0.01
    assert raw == {**BASE, "schedule": {"epochs": 10}, "head": None}
    assert parse_recipe(raw).schedule.epochs == 10
    with pytest.raises(SchemaError, match="key=value"):
        parse_recipe(BASE, ["schedule.epochs"])
    with pytest.raises(SchemaError, match="'epochs' is not a section"):
        parse_recipe(BASE, ["schedule.epochs=3", "schedule.epochs.max=4"])


def test_missing_backbone_or_training_data_is_an_error():
    with pytest.raises(SchemaError, match="needs 'backbone'"):
        parse_recipe({"data": {"train": "images"}})
    with pytest.raises(SchemaError, match="needs 'data.train'"):
        parse_recipe({"backbone": TINY_CNN})


def test_reduce_on_plateau_with_a_learning_rate_schedule_is_refused():
    # Keras cannot set a scheduled learning rate: the run would crash at its first plateau.
    with pytest.raises(SchemaError, match="reduce_on_plateau.*lr_schedule"):
        parse_recipe(BASE, ["schedule.lr_schedule=cosine", "callbacks.reduce_on_plateau={patience: 1}"])


def test_load_recipe_reads_paths_relative_to_the_file_and_names_it_in_errors(tmp_path):
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({**BASE, "data": {"train": "images", "test": "test"}}))
    recipe = load_recipe(tmp_path / "recipe.yaml", ["schedule.epochs=2"])
    assert recipe.data.train == str((tmp_path / "images").resolve())
    assert recipe.data.test == str((tmp_path / "test").resolve())
    assert recipe.schedule.epochs == 2
    # YAML 1.1 reads 3e-4 as a string; a recipe means a learning rate.
    (tmp_path / "lr.yaml").write_text("backbone: x\ndata: {train: t}\nschedule: {learning_rate: 3e-4}\n")
    assert load_recipe(tmp_path / "lr.yaml").schedule.learning_rate == 3e-4
    (tmp_path / "bad.yaml").write_text("backbone: x\ndata: {train: t}\nhead: {dropuot: 0.1}\n")
    with pytest.raises(SchemaError, match="bad.yaml: unknown key 'head.dropuot'; did you mean 'dropout'"):
        load_recipe(tmp_path / "bad.yaml")


BASE = {"backbone": TINY_CNN, "data": {"train": "images"}}
