"""The installed package is the whole package: every folder of tlkeras/ with modules is listed in setup.cfg,
so a wheel or an editable install never misses one (the tests alone would not notice: they run from the repo)."""

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "tlkeras").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
