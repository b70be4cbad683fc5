"""Where the PACS is and how to log in: a DICOMweb URL, HTTP basic or bearer-token auth, TLS.

Settings come from, first found wins per key: the explicit arguments (CLI options); a config file
(YAML or JSON: `config=`, else the file named by $MEDSEG_PACS_CONFIG); the environment
(MEDSEG_PACS_URL, MEDSEG_PACS_USERNAME + MEDSEG_PACS_PASSWORD, or MEDSEG_PACS_TOKEN,
MEDSEG_PACS_CA_BUNDLE). A config file may hold:

    url: https://pacs.example.org/dicom-web
    username: medseg            # HTTP basic ...
    password: s3cret
    token: eyJ...               # ... or a bearer token (not both)
    ca_bundle: /etc/ssl/certs/hospital-ca.pem
    verify: true                # TLS certificate verification (on unless set to false)
    timeout: 60                 # seconds per HTTP request

Secrets are never printed: `PacsAuth`'s repr hides them and no message quotes them.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from medseg.errors import ConfigError

log = logging.getLogger(__name__)

ENV_CONFIG = "MEDSEG_PACS_CONFIG"
ENV = {"url": "MEDSEG_PACS_URL", "username": "MEDSEG_PACS_USERNAME", "password": "MEDSEG_PACS_PASSWORD",
       "token": "MEDSEG_PACS_TOKEN", "ca_bundle": "MEDSEG_PACS_CA_BUNDLE"}
KEYS = ("url", "username", "password", "token", "ca_bundle", "verify", "timeout")


@dataclass(frozen=True)
class PacsAuth:
    """HTTP basic (username + password) or a bearer token; neither means no authentication."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "bearer" if self.token else "basic" if self.username else "none"

    def __repr__(self) -> str:  # never the secrets
        return f"PacsAuth(kind={self.kind!r}, username={self.username!r})"


@dataclass(frozen=True)
class PacsSettings:
    """A DICOMweb endpoint: url (e.g. http://host:8042/dicom-web), auth, TLS verification."""

    url: str
    auth: PacsAuth = field(default_factory=PacsAuth)
    verify: bool = True
    ca_bundle: Path | None = None
    timeout: float = 60.0

    def session(self):
        """A requests.Session carrying the credentials and the TLS settings."""
        import requests

        session = requests.Session()
        if self.auth.token:
            session.headers["Authorization"] = f"Bearer {self.auth.token}"
        elif self.auth.username:
            session.auth = (self.auth.username, self.auth.password or "")
        session.verify = str(self.ca_bundle) if self.ca_bundle else self.verify
        return session


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The keys of a YAML/JSON PACS config file, checked (unknown keys and wrong types refused)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: PACS config file not found; give an existing YAML or JSON file (keys: {', '.join(KEYS)})")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot parse the PACS config ({type(exc).__name__}); expected YAML or JSON with keys {', '.join(KEYS)}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the PACS config is a {type(data).__name__}; expected a mapping with keys {', '.join(KEYS)}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown PACS config key(s) {', '.join(map(str, unknown))}; expected some of {', '.join(KEYS)}")
    if ("password" in data or "token" in data) and os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s holds a secret and is readable by other users; chmod 600 it", path)
    for key in ("verify",):
        if key in data and not isinstance(data[key], bool):
            raise ConfigError(f"{path}: {key} is {type(data[key]).__name__}; expected true or false")
    if "timeout" in data and (isinstance(data["timeout"], bool) or not isinstance(data["timeout"], (int, float)) or data["timeout"] <= 0):
        raise ConfigError(f"{path}: timeout must be a positive number of seconds, e.g. 60")
    return {k: v for k, v in data.items() if v is not None}


def load_settings(
    url: str | None = None,
    *,
    config: str | os.PathLike | None = None,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    ca_bundle: str | os.PathLike | None = None,
    verify: bool | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> PacsSettings:
    """Resolve the PACS settings from the arguments, the config file and the environment (in that order)."""
    env = os.environ if env is None else env
    explicit = {"url": url, "username": username, "password": password, "token": token, "ca_bundle": ca_bundle,
                "verify": verify, "timeout": timeout}
    config = config or env.get(ENV_CONFIG) or None
    from_file = read_config_file(config) if config else {}
    from_env = {k: env[v] for k, v in ENV.items() if env.get(v)}
    values: dict[str, Any] = {}
    for key in KEYS:
        for source in (explicit, from_file, from_env):
            if source.get(key) is not None:
                values[key] = source[key]
                break
    if not values.get("url"):
        raise ConfigError("no PACS URL given; pass --url http://HOST:8042/dicom-web (or url: in the config file, or $MEDSEG_PACS_URL)")
    target = str(values["url"]).rstrip("/")
    if not target.startswith(("http://", "https://")):
        raise ConfigError(f"PACS URL {target!r} is not http(s); expected e.g. http://HOST:8042/dicom-web")
    from urllib.parse import urlsplit

    if "@" in (urlsplit(target).netloc or ""):
        raise ConfigError("the PACS URL holds credentials (user:password@host); remove them and set username/password "
                          "in the config file or MEDSEG_PACS_USERNAME / MEDSEG_PACS_PASSWORD")
    if values.get("token") and values.get("username"):
        raise ConfigError("PACS credentials: both a username and a bearer token are set; keep one (basic auth or token)")
    if values.get("password") and not values.get("username"):
        raise ConfigError("PACS credentials: a password without a username; set username (or MEDSEG_PACS_USERNAME) too")
    bundle = Path(values["ca_bundle"]) if values.get("ca_bundle") else None
    if bundle is not None and not bundle.is_file():
        raise ConfigError(f"{bundle}: CA bundle not found; give a PEM file of the certificate authorities to trust")
    if values.get("verify") is False and bundle is None:
        log.warning("TLS certificate verification is off for %s", target)
    return PacsSettings(
        url=target,
        auth=PacsAuth(values.get("username"), values.get("password"), values.get("token")),
        verify=bool(values.get("verify", True)),
        ca_bundle=bundle,
        timeout=float(values.get("timeout", 60.0)),
    )


__all__ = ["ENV", "ENV_CONFIG", "PacsAuth", "PacsSettings", "load_settings", "read_config_file"]
