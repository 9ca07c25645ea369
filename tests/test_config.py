"""Settings: defaults, env and flag overrides, and one clear line per bad key."""

from __future__ import annotations

import pytest

from podwire import config


def test_defaults_need_no_environment() -> None:
    settings = config.load(env={})
    assert settings.listen == ("127.0.0.1", 9477)
    assert settings.span_sample_ratio == 1.0


def test_env_values_are_parsed_to_their_types() -> None:
    settings = config.load(
        env={
            "PODWIRE_MAX_CONNECTIONS": "1000",
            "PODWIRE_SYN_TIMEOUT_S": "2.5",
            "PODWIRE_SPANS": "false",
            "PODWIRE_LISTEN": "[::1]:9000",
            "PODWIRE_EXTERNAL_CIDRS": "10.96.0.0/12=cluster-services, 0.0.0.0/0=internet",
        }
    )
    assert settings.max_connections == 1000
    assert settings.syn_timeout_s == 2.5
    assert settings.spans is False
    assert settings.listen == ("::1", 9000)
    assert settings.external_cidrs == (("10.96.0.0/12", "cluster-services"), ("0.0.0.0/0", "internet"))


def test_flags_override_env() -> None:
    settings = config.load(env={"PODWIRE_LISTEN": "127.0.0.1:1"}, overrides={"listen": "127.0.0.1:2"})
    assert settings.listen == ("127.0.0.1", 2)


def test_every_bad_key_gets_its_own_line() -> None:
    with pytest.raises(config.ConfigError) as info:
        config.load(
            env={
                "PODWIRE_MAX_CONNECTIONS": "lots",
                "PODWIRE_SPAN_SAMPLE_RATIO": "2",
                "PODWIRE_NO_SUCH_THING": "1",
                "PODWIRE_EXTERNAL_CIDRS": "10.0.0.300/8=x",
            }
        )
    problems = info.value.problems
    assert len(problems) == 4
    assert any("PODWIRE_NO_SUCH_THING" in p and "unknown" in p for p in problems)
    assert any(p.startswith("bad setting PODWIRE_MAX_CONNECTIONS='lots'") for p in problems)
    assert any("PODWIRE_SPAN_SAMPLE_RATIO" in p and "between 0 and 1" in p for p in problems)
    assert any("10.0.0.300/8" in p for p in problems)
    assert all("\n" not in p for p in problems)


@pytest.mark.parametrize("text", ["9477", "localhost:9477", "127.0.0.1:99999", ":9477"])
def test_bad_listen_addresses_are_refused(text: str) -> None:
    with pytest.raises(config.ConfigError):
        config.load(env={}, overrides={"listen": text})
