"""A stand-in Kubernetes API server for the `kubernetes` auth method (no real one runs here).

It serves, over real TLS with a CA generated per run, the two calls Consul's (and meshd's)
Kubernetes auth method makes, in the shapes of the Kubernetes API (authentication.k8s.io/v1 and
core/v1, https://kubernetes.io/docs/reference/kubernetes-api/authentication-resources/):

- `POST /apis/authentication.k8s.io/v1/tokenreviews`: the caller authenticates with a bearer
  token (the auth method's ServiceAccountJWT, which must belong to a reviewer account); the body
  is a TokenReview, validated strictly against the Kubernetes 1.30 schema; the answer (201) is
  the TokenReview with `status.authenticated` and `status.user` (username
  `system:serviceaccount:NS:NAME`, uid) for a service account token this server issued;
- `GET /api/v1/namespaces/NS/serviceaccounts/NAME`: the ServiceAccount with its annotations;
- `GET /openid/v1/jwks`: the service account signing key as a JWK set (the real server's
  discovery endpoint), which a `jwt` auth method can use as its JWKSURL.

Service account tokens are real JWTs (RS256) signed by this server's own key, as the real API
server signs them; anything else is `authenticated: false`. Runs on its own loop in a thread.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import ssl
import tempfile
import threading
import time
import uuid
from typing import Any

import jwt
import kubernetes_validate
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from meshd.testing import free_ports

ISSUER = "https://kubernetes.default.svc.cluster.local"
Obj = dict[str, Any]


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class TokenReviewServer:
    """`ca_pem` and `url` go in the auth method's config; `issue()` makes pod tokens."""

    def __init__(self) -> None:
        self.port = free_ports(1)[0]
        self.url = f"https://127.0.0.1:{self.port}"
        self._signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.accounts: dict[tuple[str, str], Obj] = {}
        self.uids: dict[tuple[str, str], str] = {}
        self.reviews = 0
        self._ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        self._ca = (
            x509.CertificateBuilder()
            .subject_name(_name("stand-in kubernetes CA"))
            .issuer_name(_name("stand-in kubernetes CA"))
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca_pem = self._ca.public_bytes(serialization.Encoding.PEM).decode()
        self.add_account("kube-system", "consul-auth-method")
        self.reviewer_jwt = self.issue("kube-system", "consul-auth-method")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    # ---- driving it from a test ---------------------------------------------------------

    def add_account(
        self, namespace: str, name: str, annotations: dict[str, str] | None = None
    ) -> None:
        obj: Obj = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "annotations": annotations or {},
            },
        }
        kubernetes_validate.validate(obj, "1.30", strict=True)
        self.accounts[(namespace, name)] = obj
        self.uids[(namespace, name)] = obj["metadata"]["uid"]

    def issue(self, namespace: str, name: str, lifetime: float = 3600) -> str:
        """A bound service account token, as the kubelet mounts into a pod."""
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": [ISSUER],
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": self.uids[(namespace, name)]},
            },
        }
        return jwt.encode(claims, self._signer, algorithm="RS256", headers={"kid": "stand-in"})

    def start(self) -> TokenReviewServer:
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)

    # ---- the API ------------------------------------------------------------------------

    def _account_of(self, token: str) -> tuple[str, str] | None:
        try:
            claims = jwt.decode(
                token, self._signer.public_key(), algorithms=["RS256"], audience=ISSUER,
                issuer=ISSUER,
            )  # fmt: skip
        except jwt.PyJWTError:
            return None
        parts = str(claims.get("sub", "")).split(":")
        key = (parts[2], parts[3]) if len(parts) == 4 else None
        return key if key in self.accounts else None

    def _caller(self, request: web.Request) -> tuple[str, str] | None:
        auth = request.headers.get("Authorization", "")
        return self._account_of(auth[7:]) if auth.startswith("Bearer ") else None

    async def _review(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        if caller is None:
            return _status(401, "Unauthorized", "Unauthorized")
        if caller != ("kube-system", "consul-auth-method"):
            return _status(403, "Forbidden", "tokenreviews.authentication.k8s.io is forbidden")
        try:
            body = await request.json()
            kubernetes_validate.validate(body, "1.30", strict=True)
        except (ValueError, kubernetes_validate.ValidationError) as e:
            return _status(400, "BadRequest", f"invalid TokenReview: {e}")
        if body.get("kind") != "TokenReview" or "token" not in (body.get("spec") or {}):
            return _status(400, "BadRequest", "the body must be a TokenReview with spec.token")
        self.reviews += 1
        account = self._account_of(body["spec"]["token"])
        status: Obj = {"authenticated": False}
        if account is not None:
            ns, name = account
            status = {
                "authenticated": True,
                "user": {
                    "username": f"system:serviceaccount:{ns}:{name}",
                    "uid": self.uids[account],
                    "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}"],
                },
                "audiences": [ISSUER],
            }
        answer = {**body, "metadata": {"creationTimestamp": None}, "status": status}
        return web.json_response(answer, status=201)

    async def _account(self, request: web.Request) -> web.Response:
        if self._caller(request) is None:
            return _status(401, "Unauthorized", "Unauthorized")
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.accounts:
            return _status(404, "NotFound", f'serviceaccounts "{key[1]}" not found')
        return web.json_response(self.accounts[key])

    async def _jwks(self, request: web.Request) -> web.Response:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._signer.public_key()))
        return web.json_response(
            {"keys": [{**jwk, "kid": "stand-in", "use": "sig", "alg": "RS256"}]}
        )

    async def _start(self) -> None:
        cert_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("kube-apiserver"))
            .issuer_name(self._ca.subject)
            .public_key(cert_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        tmp = tempfile.mkdtemp(prefix="k8s-tokenreview-")
        cert_path, key_path = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as f:
            f.write(
                cert_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert_path, key_path)
        app = web.Application()
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self._review)
        app.router.add_get("/api/v1/namespaces/{ns}/serviceaccounts/{name}", self._account)
        app.router.add_get("/openid/v1/jwks", self._jwks)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
