"""SSL contexts for HTTPS targets and webhook sinks from a ``tls:`` block."""

from __future__ import annotations

import ssl

from consumer_core.config.model import TlsSpec
from consumer_core.errors import ConfigError, ConfigProblem

__all__ = ["ssl_context"]


def ssl_context(spec: TlsSpec, *, path: str) -> ssl.SSLContext | bool:
    """What aiohttp's ``ssl=`` wants: ``True`` for the defaults, else a context.

    Raises ``ConfigError`` (at start-up) when a file cannot be read.
    """
    if spec.ca_file is None and spec.cert_file is None and spec.verify:
        return True
    try:
        context = ssl.create_default_context(
            cafile=str(spec.ca_file) if spec.ca_file is not None else None
        )
        if spec.cert_file is not None:
            key = str(spec.key_file) if spec.key_file is not None else None
            context.load_cert_chain(str(spec.cert_file), key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([ConfigProblem("<config>", None, f"{path}.tls", str(exc))]) from exc
    if not spec.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
