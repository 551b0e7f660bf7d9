"""TLS for the agent<->server RPC channel, from the `tls` config block (Consul's key names)."""

from __future__ import annotations

import ssl
from typing import Any


def tls_contexts(cfg: Any) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(server side, client side); (None, None) when no certificate is configured.

    verify_incoming: servers demand a client certificate signed by ca_file.
    verify_outgoing: agents verify the server's certificate against ca_file.
    verify_server_hostname: additionally the name must be `server.<datacenter>.<domain>`,
    which stops a client certificate from impersonating a server (Consul's rule).
    """
    t = cfg.tls
    if not (t.cert_file and t.key_file):
        return None, None
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=t.ca_file)
    server.load_cert_chain(t.cert_file, t.key_file)
    server.verify_mode = (
        ssl.CERT_REQUIRED
        if t.verify_incoming
        else ssl.CERT_OPTIONAL
        if t.ca_file
        else ssl.CERT_NONE
    )
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=t.ca_file)
    client.load_cert_chain(t.cert_file, t.key_file)
    if not t.verify_outgoing:
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
    elif not t.verify_server_hostname:
        client.check_hostname = False
    return server, client


def server_hostname(cfg: Any) -> str:
    return f"server.{cfg.datacenter}.{cfg.domain.rstrip('.')}"
