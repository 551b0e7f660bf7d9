"""`meshd k8s webhook`: the injector's HTTPS listener (the API server calls webhooks only over TLS).

A body that is not an AdmissionReview gets 400 with the reason; every AdmissionReview gets 200
with `allowed: true`, so a meshd bug shows as a warning on the pod, not as a refused Deployment.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

from aiohttp import web

from meshd.k8s.webhook import AdmissionError, InjectorSettings, review

SETTINGS_KEY = web.AppKey("settings", InjectorSettings)
MAX_BODY = 3 * 1024 * 1024  # a pod spec can be large; the API server caps requests at 3 MiB


def _bad_request(reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=400)


async def mutate(request: web.Request) -> web.Response:
    try:
        body: Any = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as e:
        return _bad_request(f"the body is not JSON: {e}")
    try:
        answer = review(body, request.app[SETTINGS_KEY])
    except AdmissionError as e:
        return _bad_request(str(e))
    return web.json_response(answer)


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def make_app(settings: InjectorSettings) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[SETTINGS_KEY] = settings
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", healthz)
    return app


def server_ssl(cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS 1.2+ with the certificate the MutatingWebhookConfiguration's caBundle vouches for."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


async def start(
    settings: InjectorSettings, host: str, port: int, ctx: ssl.SSLContext
) -> web.AppRunner:
    """Listening once this returns; the caller cleans the runner up."""
    runner = web.AppRunner(make_app(settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ctx).start()
    return runner


async def serve(settings: InjectorSettings, host: str, port: int, ctx: ssl.SSLContext) -> None:
    runner = await start(settings, host, port, ctx)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
