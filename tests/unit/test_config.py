"""Run configs: substitution, validation with key paths, distributions, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fnstack.config import (
    available_distributions,
    load_config,
    parse_config,
    resolve_config_path,
)
from fnstack.errors import ConfigError

STORAGE = {
    "backends": {
        "kv": {"type": "kv_sqlite", "db_path": "/tmp/x.db"},
        "blob": {"type": "blob_localfs", "root": "/tmp/blobs"},
    },
    "stores": {
        "registry": {"backend": "kv", "namespace": "registry"},
        "files": {"backend": "blob", "prefix": "files/"},
    },
}


def openai_provider(**config: object) -> dict[str, object]:
    return {
        "provider_id": "up",
        "provider_type": "remote::openai",
        "config": {"base_url": "http://127.0.0.1:9/v1", **config},
    }


def test_default_substitution_uses_value_when_set_and_non_empty() -> None:
    data = {"storage": STORAGE, "cache_dir": "${env.CACHE:=/default}"}
    assert parse_config(data, env={}).cache_dir == "/default"
    assert parse_config(data, env={"CACHE": ""}).cache_dir == "/default"
    assert parse_config(data, env={"CACHE": "/set"}).cache_dir == "/set"


def test_plus_substitution_gives_value_only_when_set() -> None:
    data = {"storage": STORAGE, "cache_dir": "a${env.FLAG:+-on}"}
    assert parse_config(data, env={}).cache_dir == "a"
    assert parse_config(data, env={"FLAG": "1"}).cache_dir == "a-on"


def test_substitution_inside_longer_strings_and_several_per_string() -> None:
    data = {"storage": STORAGE, "cache_dir": "${env.A:=x}/${env.B:=y}/z"}
    assert parse_config(data, env={"B": "b"}).cache_dir == "x/b/z"


def test_bare_unset_variable_names_variable_and_key_path() -> None:
    data = {"storage": STORAGE, "providers": {"inference": [openai_provider(
        base_url="${env.UPSTREAM_URL}")]}}
    with pytest.raises(ConfigError) as err:
        parse_config(data, env={})
    assert "UPSTREAM_URL" in str(err.value)
    assert err.value.path == "providers.inference[0].config.base_url"


def test_malformed_substitution_is_an_error() -> None:
    with pytest.raises(ConfigError, match="malformed"):
        parse_config({"cache_dir": "${env.}"}, env={})


def test_provider_config_errors_name_the_full_key_path() -> None:
    data = {"storage": STORAGE, "providers": {"inference": [openai_provider(
        base_url="ftp://nope")]}}
    with pytest.raises(ConfigError) as err:
        parse_config(data, env={})
    assert err.value.path == "providers.inference[0].config.base_url"
    assert "providers.inference[0].config.base_url" in str(err.value)


def test_missing_required_provider_field_names_path() -> None:
    data = {"storage": STORAGE, "providers": {"inference": [
        {"provider_id": "up", "provider_type": "remote::openai", "config": {}}]}}
    with pytest.raises(ConfigError) as err:
        parse_config(data, env={})
    assert err.value.path == "providers.inference[0].config.base_url"


def test_unknown_top_level_key_is_rejected() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"storage": STORAGE, "provders": {}}, env={})
    assert err.value.path == "provders"


def test_wrong_type_names_path() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"storage": STORAGE, "server": {"port": "eighty"}}, env={})
    assert err.value.path == "server.port"


def test_backend_field_error_path_has_no_union_tag() -> None:
    storage = {"backends": {"kv": {"type": "kv_sqlite"}}, "stores": {}}
    with pytest.raises(ConfigError) as err:
        parse_config({"storage": storage}, env={})
    assert err.value.path == "storage.backends.kv.db_path"


def test_unknown_provider_type() -> None:
    data = {"providers": {"inference": [{"provider_id": "x", "provider_type": "remote::nope"}]}}
    with pytest.raises(ConfigError) as err:
        parse_config(data, env={})
    assert err.value.path == "providers.inference[0].provider_type"
    assert "remote::openai" in str(err.value)  # lists what is known


def test_provider_under_the_wrong_api() -> None:
    data = {"providers": {"safety": [openai_provider()]}}
    with pytest.raises(ConfigError, match="inference provider"):
        parse_config(data, env={})


def test_duplicate_provider_ids() -> None:
    data = {"providers": {"inference": [openai_provider(), openai_provider()]}}
    with pytest.raises(ConfigError) as err:
        parse_config(data, env={})
    assert err.value.path == "providers.inference[1]"


def test_provider_with_empty_id_is_switched_off() -> None:
    p = openai_provider()
    p["provider_id"] = "${env.UPSTREAM:+up}"
    assert parse_config({"providers": {"inference": [p]}}, env={}).providers["inference"] == []
    cfg = parse_config({"providers": {"inference": [p]}}, env={"UPSTREAM": "1"})
    assert [x.provider_id for x in cfg.providers["inference"]] == ["up"]


def test_store_referencing_missing_backend() -> None:
    storage = {"backends": {}, "stores": {"registry": {"backend": "nope", "namespace": "r"}}}
    with pytest.raises(ConfigError) as err:
        parse_config({"storage": storage}, env={})
    assert err.value.path == "storage.stores.registry.backend"
    assert "nope" in str(err.value)


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ({"backend": "blob", "namespace": "r"}, "needs a kv backend"),
        ({"backend": "kv", "prefix": "p/"}, "needs a blob backend"),
        ({"backend": "kv"}, "needs a namespace"),
    ],
)
def test_store_family_mismatch(store: dict[str, str], message: str) -> None:
    storage = {"backends": STORAGE["backends"], "stores": {"x": store}}
    with pytest.raises(ConfigError, match=message):
        parse_config({"storage": storage}, env={})


def test_registered_model_needs_known_provider() -> None:
    data = {
        "providers": {"inference": [openai_provider()]},
        "registered_resources": {"models": [{"model_id": "m", "provider_id": "other"}]},
    }
    with pytest.raises(ConfigError) as err:
        parse_config(data, env={})
    assert err.value.path == "registered_resources.models[0].provider_id"


def test_models_function_api_has_no_providers() -> None:
    with pytest.raises(ConfigError, match="served by fnstack itself"):
        parse_config({"providers": {"models": []}}, env={})


def test_distributions_are_listed_and_load() -> None:
    assert {"local", "aws"} <= set(available_distributions())
    local = load_config("local", env={"FNSTACK_HOME": "/tmp/h"})
    assert local.storage.backends["kv_default"].type == "kv_sqlite"
    assert local.server.port == 8321
    types = {p.provider_type for p in local.providers["inference"]}
    assert types == {"inline::reference", "inline::onnx-embeddings"}


def test_aws_distribution_requires_its_variables() -> None:
    with pytest.raises(ConfigError) as err:
        load_config("aws", env={})
    assert "FNSTACK_TABLE" in str(err.value)
    env = {"FNSTACK_TABLE": "t-table", "FNSTACK_BUCKET": "b-bucket", "FNSTACK_QUEUE_URL": "q"}
    cfg = load_config("aws", env=env)
    backend = cfg.storage.backends["kv_default"]
    assert backend.type == "kv_dynamodb" and backend.table == "t-table"
    assert backend.endpoint_url is None  # "" means unset
    assert cfg.inference_store.write_mode == "sync"


def test_resolve_unknown_name() -> None:
    with pytest.raises(ConfigError, match="neither a YAML file nor a distribution"):
        resolve_config_path("nonexistent-dist")


def test_invalid_yaml_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fnstack.cli", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )


def test_cli_broken_config_exits_non_zero_with_key_path(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"providers": {"inference": [openai_provider(
        base_url="not a url")]}}))
    result = _cli("run", str(cfg))
    assert result.returncode != 0
    assert "providers.inference[0].config.base_url" in result.stderr


def test_cli_lists() -> None:
    apis = _cli("list-apis")
    assert apis.returncode == 0 and "inference" in apis.stdout
    dists = _cli("list-distributions")
    assert dists.returncode == 0 and "local" in dists.stdout and "aws" in dists.stdout
    providers = _cli("list-providers", "inference")
    assert providers.returncode == 0
    for t in ("inline::reference", "remote::openai", "inline::onnx-embeddings"):
        assert t in providers.stdout
    assert _cli("list-providers", "nonsense").returncode != 0
