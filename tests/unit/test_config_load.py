"""The configuration: defaults, then the file, then ICEPROD_* variables, then flags."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from iceprod_server import config
from iceprod_server.config import Config, ConfigError, load

REPO = Path(__file__).resolve().parents[2]


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / config.CONFIG_FILE).write_text(text)
    return folder


def test_defaults_without_a_file(tmp_path: Path) -> None:
    c = load(tmp_path, environ={})
    assert c == dataclasses.replace(Config(), data_dir=str(tmp_path))
    assert c.database_url == "sqlite:///" + str(tmp_path.resolve() / "iceprod.db")


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    write(tmp_path, "port = 9001\nlease_seconds = 60\npublic_read = false\n"
                    "[database]\ndb_threads = 3\n")
    from_file = load(tmp_path, environ={})
    assert (from_file.port, from_file.lease_seconds, from_file.public_read,
            from_file.db_threads) == (9001, 60.0, False, 3)
    env = {"ICEPROD_PORT": "9002", "ICEPROD_PUBLIC_READ": "yes"}
    from_env = load(tmp_path, environ=env)
    assert (from_env.port, from_env.lease_seconds, from_env.public_read) == (9002, 60.0, True)
    from_flags = load(tmp_path, {"port": 9003, "lease_seconds": None}, environ=env)
    assert (from_flags.port, from_flags.lease_seconds) == (9003, 60.0), \
        "a flag overrides the environment; a flag not given (None) overrides nothing"


def test_data_dir_from_the_environment(tmp_path: Path) -> None:
    write(tmp_path, "port = 9100\n")
    c = load(None, environ={"ICEPROD_DATA_DIR": str(tmp_path)})
    assert c.data_dir == str(tmp_path) and c.port == 9100


@pytest.mark.parametrize("env, words", [
    ({"ICEPROD_PORT": "eighty"}, ("ICEPROD_PORT", "port")),
    ({"ICEPROD_PUBLIC_READ": "maybe"}, ("ICEPROD_PUBLIC_READ",)),
    ({"ICEPROD_LEASE_SECONDS": "-5"}, ("lease_seconds",)),
    ({"ICEPROD_DB_THREADS": "0"}, ("db_threads",)),
    ({"ICEPROD_PORT": "70000"}, ("port",)),
    ({"ICEPROD_DB_URL": "postgres://x/y"}, ("db_url",)),
])
def test_bad_environment_values_are_named(tmp_path: Path, env: dict[str, str],
                                           words: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, environ=env)
    for word in words:
        assert word in str(e.value), str(e.value)


@pytest.mark.parametrize("text, words", [
    ("colour = 'red'\n", ("colour", "unknown")),
    ("port = 'eighty'\n", ("port",)),
    ("public_read = 1\n", ("public_read",)),
    ("port = \n", ("iceprod.toml",)),
])
def test_bad_file_values_are_named(tmp_path: Path, text: str, words: tuple[str, ...]) -> None:
    write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(tmp_path, environ={})
    for word in words:
        assert word in str(e.value), str(e.value)


def test_bad_flag_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--port"):
        load(tmp_path, {"port": "x"}, environ={})


def test_config_is_frozen(tmp_path: Path) -> None:
    c = load(tmp_path, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.port = 1  # type: ignore[misc]


def test_example_file_documents_every_option_and_loads(tmp_path: Path) -> None:
    example = REPO / "conf" / "iceprod.example.toml"
    text = example.read_text()
    flat = config.flatten(tomllib.loads(text))
    names = {f.name for f in dataclasses.fields(Config)} - {"data_dir"}
    assert names <= set(flat), f"options missing from {example}: {sorted(names - set(flat))}"
    write(tmp_path, text)
    c = load(tmp_path, environ={})
    assert c == dataclasses.replace(Config(), data_dir=str(tmp_path)), \
        "the example file should show the defaults"


def test_proxy_files_and_gsiftp_tables(tmp_path: Path) -> None:
    write(tmp_path, '[proxy]\nallow = ["https://data.example.org/sim/", '
                    '"gsiftp://gridftp.example.org/data/"]\ncache_max_bytes = 1000\n'
                    '[files]\naccess = { "" = "any", "public" = "anonymous", '
                    '"outputs/" = "pilot,admin" }\n[gsiftp]\nbackend = "url-copy"\n')
    c = load(tmp_path, environ={})
    assert c.proxy_allow == ("https://data.example.org/sim/",
                             "gsiftp://gridftp.example.org/data/")
    assert c.proxy_cache_max_bytes == 1000
    assert c.files_access == {"": "any", "public": "anonymous", "outputs": "pilot,admin"}
    assert c.gsiftp_backend == "url-copy"
    env = {"ICEPROD_PROXY_ALLOW": "http://a.example/x/, ftp://b.example/",
           "ICEPROD_FILES_ACCESS": "=user;logs=admin"}
    from_env = load(tmp_path, environ=env)
    assert from_env.proxy_allow == ("http://a.example/x/", "ftp://b.example/")
    assert from_env.files_access == {"": "user", "logs": "admin"}


@pytest.mark.parametrize("env, words", [
    ({"ICEPROD_PROXY_ALLOW": "file:///etc/"}, ("proxy_allow", "file:///etc/")),
    ({"ICEPROD_PROXY_ALLOW": "https://"}, ("proxy_allow",)),
    ({"ICEPROD_FILES_ACCESS": "=pilots"}, ("files_access", "pilots")),
    ({"ICEPROD_FILES_ACCESS": "no equals sign"}, ("files_access",)),
    ({"ICEPROD_PROXY_ACCESS": "root"}, ("proxy_access", "root")),
    ({"ICEPROD_GSIFTP_BACKEND": "ftplib"}, ("gsiftp_backend", "ftplib")),
])
def test_bad_files_and_proxy_values_are_named(tmp_path: Path, env: dict[str, str],
                                              words: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, environ=env)
    for word in words:
        assert word in str(e.value), str(e.value)
