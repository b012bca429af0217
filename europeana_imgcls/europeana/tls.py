"""One TLS context for every HTTP client eic makes in a process: building one loads the CA bundle, ~50 ms each
time, which a command that makes a client per request batch, or a test suite that makes thousands, pays again and
again. An ``ssl.SSLContext`` may be shared by clients and threads; this one is what httpx would build itself (the CA
bundle of certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when set)."""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's TLS context, built on first use (give it as httpx's ``verify``)."""
    return httpx.create_ssl_context()
