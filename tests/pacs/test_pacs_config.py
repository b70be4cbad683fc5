"""PACS settings (no server needed): where credentials come from, that they are never shown, TLS
options, the state store across reopenings, the algorithm stamp, and the missing-extra message."""

from __future__ import annotations

import sys

import pytest

from medseg.errors import ConfigError
from medseg.pacs.config import load_settings


def test_arguments_win_over_the_file_which_wins_over_the_environment(tmp_path):
    config = tmp_path / "pacs.yaml"
    config.write_text("url: https://file.example/dicom-web\nusername: file-user\npassword: file-secret\ntimeout: 5\n")
    config.chmod(0o600)
    env = {"MEDSEG_PACS_URL": "https://env.example/dicom-web", "MEDSEG_PACS_USERNAME": "env-user",
           "MEDSEG_PACS_PASSWORD": "env-secret", "MEDSEG_PACS_CONFIG": str(config)}
    from_file = load_settings(env=env)  # $MEDSEG_PACS_CONFIG names the file
    assert (from_file.url, from_file.auth.username, from_file.auth.password, from_file.timeout) == (
        "https://file.example/dicom-web", "file-user", "file-secret", 5.0)
    explicit = load_settings("http://arg.example:8042/dicom-web/", env=env)
    assert explicit.url == "http://arg.example:8042/dicom-web" and explicit.auth.username == "file-user"
    only_env = load_settings(env={k: v for k, v in env.items() if k != "MEDSEG_PACS_CONFIG"})
    assert (only_env.url, only_env.auth.username, only_env.auth.kind) == ("https://env.example/dicom-web", "env-user", "basic")
    assert "secret" not in repr(only_env) and "secret" not in repr(only_env.auth)
    session = only_env.session()
    assert session.auth == ("env-user", "env-secret") and session.verify is True  # TLS checked by default


def test_bearer_token_ca_bundle_and_verify(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = load_settings("https://pacs.example/dicom-web", ca_bundle=ca, env={"MEDSEG_PACS_TOKEN": "tok-123"})
    session = settings.session()
    assert settings.auth.kind == "bearer" and session.headers["Authorization"] == "Bearer tok-123" and session.auth is None
    assert session.verify == str(ca)
    assert "tok-123" not in repr(settings)
    config = tmp_path / "insecure.json"
    config.write_text('{"url": "https://pacs.example/dicom-web", "verify": false}')
    assert load_settings(config=config, env={}).session().verify is False


@pytest.mark.parametrize("text, args, message", [
    ("colour: red\n", {}, r"unknown PACS config key\(s\) colour; expected some of url"),
    ("verify: maybe\n", {}, r"verify is str; expected true or false"),
    ("username: a\ntoken: b\n", {"url": "http://h/dicom-web"}, r"both a username and a bearer token"),
    ("password: p\n", {"url": "http://h/dicom-web"}, r"a password without a username"),
    ("", {}, r"no PACS URL given; pass --url"),
    ("", {"url": "ftp://h/dicom-web"}, r"is not http\(s\)"),
    ("", {"url": "http://user:pw@h/dicom-web"}, r"holds credentials .*remove them"),
    ("", {"url": "https://h/dicom-web", "ca_bundle": "/nonexistent/ca.pem"}, r"CA bundle not found"),
])
def test_bad_settings_are_one_line_naming_the_problem(tmp_path, text, args, message):
    config = tmp_path / "pacs.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_settings(config=config, env={}, **args)
    assert "\n" not in str(err.value) and "pw" not in str(err.value)


def test_state_store_survives_reopening_and_recovers_running_rows(tmp_path):
    from medseg.pacs.state import StateStore

    store = StateStore(tmp_path / "state")
    assert store.add("1.2.3", "1.2.3.4") and not store.add("1.2.3", "1.2.3.4")
    store.add("1.2.3", "1.2.3.5")
    store.start("1.2.3.4")
    store.finish("1.2.3.5")
    store.set_cursor("orthanc-changes", "42")
    store.close()  # as a kill would leave it: 1.2.3.4 still running
    again = StateStore(tmp_path / "state")
    assert again.get("1.2.3.4").status == "running" and again.recover() == 1
    assert [r.series_uid for r in again.due()] == ["1.2.3.4"] and again.cursor("orthanc-changes") == "42"
    assert again.fail("1.2.3.4", "boom", retry_in=60) == 1 and again.due() == []  # backed off
    assert again.fail("1.2.3.4", "boom", retry_in=None) == 2 and again.get("1.2.3.4").status == "failed"
    assert again.counts() == {"done": 1, "failed": 1}


def test_missing_pacs_extra_is_one_line_naming_the_install(monkeypatch):
    from medseg.extras import MissingExtraError
    from medseg.pacs.dicomweb import Client

    monkeypatch.setitem(sys.modules, "dicomweb_client", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "dicomweb_client.api", raising=False)
    with pytest.raises(MissingExtraError, match=r"^dicomweb-client is not installed; `pip install medseg\[pacs\]` adds it$"):
        Client("http://localhost:8042/dicom-web")
