"""fsspec storage options: the one rule that keeps secrets out of files (parsed by :func:`core.storage.parse_storage_options`).

Options go to every fsspec filesystem of the run's remote URLs (``endpoint_url``, ``anon``,
``client_kwargs.region_name`` ...). Credentials are best left to the usual environment (``AWS_*``,
``GOOGLE_APPLICATION_CREDENTIALS``); given as options they travel to the workers in task arguments
only, and :func:`redact` replaces them, and the user-info of any URL value (``http://user:pw@proxy``), wherever
a config is written or printed (``run.json``, reports, logged task arguments)::

    options = parse_storage_options(["endpoint_url=http://127.0.0.1:9000", "anon=false", "secret=abc"])
    redact(options)   # {'endpoint_url': 'http://127.0.0.1:9000', 'anon': False, 'secret': '<redacted>'}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dinolab.core.storage import StorageOptionError, parse_storage_options  # noqa: F401 - the CLI's names for them

REDACTED = "<redacted>"
SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "credential", "auth", "session", "signature",
                "sas", "private", "cert")
"""An option whose name holds one of these (any case, ``aws_secret_access_key``, ``account_key``...) is a secret."""
PUBLIC_OPTIONS = frozenset({"endpoint_url", "anon", "region_name", "requester_pays", "use_ssl", "version_aware",
                            "default_block_size", "default_cache_type", "project", "cache_type", "block_size",
                            "client_kwargs", "config_kwargs", "s3_additional_kwargs", "skip_instance_cache"})
"""Names known to hold no secret, kept when a config is written (needed to resume against the same store)."""


def is_secret(name: str) -> bool:
    """Whether option ``name`` may hold a credential (unknown names holding a secret word are)."""
    lowered = name.lower()
    return lowered not in PUBLIC_OPTIONS and any(word in lowered for word in SECRET_WORDS)


def redact(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with every secret value replaced by :data:`REDACTED` and the user-info of every URL value
    (``http://user:pw@host`` -> ``http://<redacted>@host``) removed, at any depth of nested mappings and lists."""
    return {name: REDACTED if is_secret(str(name)) else _redact_value(value) for name, value in options.items()}


def _redact_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return redact(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(item) for item in value)
    if isinstance(value, str):
        return redact_url(value)
    return value


def redact_url(text: str) -> str:
    """``text`` with the user-info of a URL (``scheme://user:password@host...``) replaced by :data:`REDACTED`."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if not parts.scheme or "@" not in parts.netloc:
        return text
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{parts.netloc.rpartition('@')[2]}"))
