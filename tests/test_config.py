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


# --- every setting has a type, a range and an upper bound ------------------------------------

# one value past each bound (or of the wrong type) per setting; the key must be named
OUT_OF_RANGE = {
    "PODWIRE_LISTEN": "127.0.0.1:65536",
    "PODWIRE_LOG_FORMAT": "xml",
    "PODWIRE_LOG_LEVEL": "loud",
    "PODWIRE_NETNS": "../etc",
    "PODWIRE_INTERFACE_INCLUDE": "(",
    "PODWIRE_INTERFACE_EXCLUDE": "x" * 1025,
    "PODWIRE_VETH_ONLY": "perhaps",
    "PODWIRE_RING_BLOCK_KIB": "1048576",
    "PODWIRE_RING_BLOCKS": "100000000",
    "PODWIRE_RING_RETIRE_MS": "99999999999",
    "PODWIRE_RING_MEMORY_MIB": "2049",
    "PODWIRE_MAX_CONNECTIONS": "16777217",
    "PODWIRE_MAX_HALF_OPEN": "0",
    "PODWIRE_SYN_TIMEOUT_S": "nan",
    "PODWIRE_CLOSING_TIMEOUT_S": "inf",
    "PODWIRE_IDLE_TIMEOUT_S": "1e300",
    "PODWIRE_INVENTORY": "",
    "PODWIRE_KUBE": "maybe",
    "PODWIRE_KUBECONFIG": "a\nb",
    "PODWIRE_NODE_NAME": "Node_A",
    "PODWIRE_EXTERNAL_CIDRS": "10.0.0.0/8=a,10.0.0.0/8=b",
    "PODWIRE_IDENTITY_HISTORY_S": "604801",
    "PODWIRE_DNS_NAMES": "2",
    "PODWIRE_SERVICE_BACKENDS": "both",
    "PODWIRE_DNS_RESOLVERS": "10.0.0.300",
    "PODWIRE_OTLP": "yes",
    "PODWIRE_SPANS": "",
    "PODWIRE_SPAN_SAMPLE_RATIO": "-0.1",
    "PODWIRE_LABEL_POD_NAMES": "y",
    "PODWIRE_LABEL_CLIENT_PORT": "n",
    "PODWIRE_MAX_SERIES": "1000001",
    "PODWIRE_DURATION_BUCKETS": "0.1,0.05",
    "PODWIRE_EXPORT_QUEUE_SIZE": "1048577",
    "PODWIRE_HTTP_MAX_CONNECTIONS": "4097",
    "PODWIRE_HTTP_REQUEST_TIMEOUT_S": "301",
    "PODWIRE_HTTP_IDLE_TIMEOUT_S": "0",
    "PODWIRE_HTTP_BACKLOG": "1e9",
    "PODWIRE_HTTP_WORKERS": "65",
    "PODWIRE_SOCKSTATS": "sometimes",
    "PODWIRE_SOCKSTATS_INTERVAL_S": "3601",
    "PODWIRE_NETNS_DIR": "run/netns",
    "PODWIRE_TLS": "2",
    "PODWIRE_TLS_MAX_CONNECTIONS": "1048577",
    "PODWIRE_TLS_MAX_HANDSHAKE_KIB": "1025",
    "PODWIRE_TLS_PROBE": "sometimes",
    "PODWIRE_TLS_PROBE_CONCURRENCY": "65",
    "PODWIRE_TLS_PROBE_TIMEOUT_S": "0.01",
    "PODWIRE_TLS_PROBE_TTL_S": "604801",
    "PODWIRE_VIEWS_WINDOW_S": "86401",
    "PODWIRE_VIEWS_MAX_CONNECTIONS": "1000001",
    "PODWIRE_VIEWS_MAX_EDGES": "100001",
    "PODWIRE_VIEWS_PEERS": "a:1",
    "PODWIRE_VIEWS_PEER_SELECTOR": "x" * 1001,
    "PODWIRE_VIEWS_PEER_NAMESPACE": "a\nb",
    "PODWIRE_VIEWS_PEER_PORT": "65536",
    "PODWIRE_VIEWS_PEER_TIMEOUT_S": "31",
    "PODWIRE_VIEWS_FANOUT_CONCURRENCY": "65",
    "PODWIRE_VIEWS_MAX_PEERS": "1001",
}


def test_every_setting_has_an_out_of_range_case_here() -> None:
    assert set(OUT_OF_RANGE) == {config.env_name(f) for f in config._FIELDS}


@pytest.mark.parametrize(("key", "value"), sorted(OUT_OF_RANGE.items()))
def test_a_value_out_of_range_is_refused_naming_its_key(key: str, value: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.load(env={key: value})
    (problem,) = info.value.problems
    assert problem.startswith(f"bad setting {key}=")
    assert "\n" not in problem and "Traceback" not in problem


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PODWIRE_RING_BLOCK_KIB", "16384"),
        ("PODWIRE_RING_BLOCKS", "4096"),
        ("PODWIRE_RING_RETIRE_MS", "60000"),
        ("PODWIRE_MAX_CONNECTIONS", "16777216"),
        ("PODWIRE_NODE_NAME", "ip-10-0-0-7.eu-west-1.compute.internal"),
        ("PODWIRE_NETNS", "cni-1234-abcd"),
    ],
)
def test_the_upper_bounds_themselves_are_accepted(key: str, value: str) -> None:
    settings = config.load(env={key: value, "PODWIRE_RING_MEMORY_MIB": "2048"})
    assert str(getattr(settings, key.removeprefix("PODWIRE_").lower())) == value


def test_one_ring_larger_than_the_ring_memory_cap_is_refused() -> None:
    with pytest.raises(config.ConfigError) as info:
        config.load(env={"PODWIRE_RING_BLOCK_KIB": "4096", "PODWIRE_RING_BLOCKS": "128"})
    (problem,) = info.value.problems
    assert "PODWIRE_RING_MEMORY_MIB=256" in problem and "512 MiB" in problem
    settings = config.load(env={"PODWIRE_RING_BLOCK_KIB": "4096", "PODWIRE_RING_BLOCKS": "128",
                                "PODWIRE_RING_MEMORY_MIB": "1024"})  # fmt: skip
    assert settings.max_rings == 2
    assert config.Settings().max_rings == 32  # 8 MiB rings under 256 MiB


def test_duplicate_cidrs_are_refused_whatever_their_spelling() -> None:
    with pytest.raises(config.ConfigError) as info:
        config.load(env={"PODWIRE_EXTERNAL_CIDRS": "10.0.0.0/8=a, 10.1.2.3/8=b"})
    assert "10.0.0.0/8 is listed twice" in info.value.problems[0]


@pytest.mark.parametrize("name", ["", "node-a\n", "node-a\nnode-b", "-a", "a" * 254])
def test_node_names_must_be_kubernetes_node_names(name: str) -> None:
    with pytest.raises(config.ConfigError):
        config.load(env={"PODWIRE_NODE_NAME": name})


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (",", "1 to 64"),
        (",".join(str(i + 1) for i in range(65)), "1 to 64"),
        ("0,1", "> 0"),
        ("1,nan", "> 0"),
        ("1,604801", "<= 604800"),
        ("1,1", "increasing"),
        ("1,x", "could not convert"),
    ],
)
def test_duration_buckets_are_bounded_and_increasing(text: str, why: str) -> None:
    with pytest.raises(config.ConfigError, match=why):
        config.load({"PODWIRE_DURATION_BUCKETS": text})
    assert config.load({"PODWIRE_DURATION_BUCKETS": " 0.0005, 0.01,60 "}).duration_buckets == (
        0.0005,
        0.01,
        60.0,
    )
