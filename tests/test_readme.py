"""The README is the user's reference: every setting and every metric podwire has is in it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from podwire import config
from podwire.telemetry import names

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    fields = [f.name for f in dataclasses.fields(config.Settings) if f.name != "extra"]
    missing = [
        config.env_name(f)
        for f in fields
        if config.env_name(f) not in README and f"`{_short(f)}`" not in README
    ]
    assert not missing, missing


def _short(field: str) -> str:
    # settings documented in pairs, e.g. `PODWIRE_INTERFACE_INCLUDE` / `_EXCLUDE`
    return "_" + field.upper().rsplit("_", 1)[-1]


def test_every_metric_name_is_documented() -> None:
    metric_names = [
        v for k, v in vars(names).items() if k.isupper() and isinstance(v, str) and v.count(".") >= 2
    ]
    missing = [m for m in metric_names if f"`{m}`" not in README and not m.startswith(("client.", "server."))]
    assert not missing, missing
