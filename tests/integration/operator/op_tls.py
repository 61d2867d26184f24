"""A TLS API endpoint for credential tests: a test CA, server and client certificates, and an
authenticating TLS proxy in front of the emulator.

    pki = Pki.create(tmp_path)              # ca.crt, server.crt/key (127.0.0.1), client.crt/key
    async with tls_proxy(emulator, pki, tokens={"t0"}) as proxy:
        proxy.url                               # https://127.0.0.1:PORT
        proxy.seen                              # [(identity, user_agent, status)], identity "cert:CN" or "token:T"

The proxy answers 401 (a Status, as kube-apiserver does) to a request with neither a client
certificate signed by the CA nor an accepted bearer token; otherwise it forwards the request to the
emulator and streams the answer back (watches included), until the client goes away.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    ca_pem: bytes
    server_cert: Path
    server_key: Path
    ca_file: Path
    client_cert_pem: bytes
    client_key_pem: bytes
    client_cert: Path
    client_key: Path

    @classmethod
    def create(cls, folder: Path, client_name: str = "kubefusion-operator") -> Pki:
        folder.mkdir(parents=True, exist_ok=True)
        ca_key = _key()
        ca = _cert("kubefusion-test-ca", ca_key, None, ca_key, ca=True)
        server_key, client_key = _key(), _key()
        server = _cert("127.0.0.1", server_key, ca, ca_key, server=True)
        client = _cert(client_name, client_key, ca, ca_key)
        files = {
            "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
            "server.crt": server.public_bytes(serialization.Encoding.PEM),
            "server.key": _pem_key(server_key),
            "client.crt": client.public_bytes(serialization.Encoding.PEM),
            "client.key": _pem_key(client_key),
        }
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return cls(
            ca_pem=files["ca.crt"],
            server_cert=folder / "server.crt",
            server_key=folder / "server.key",
            ca_file=folder / "ca.crt",
            client_cert_pem=files["client.crt"],
            client_key_pem=files["client.key"],
            client_cert=folder / "client.crt",
            client_key=folder / "client.key",
        )


@dataclass
class TlsProxy:
    url: str
    tokens: set[str]
    seen: list[tuple[str, str, int]] = field(default_factory=list)

    def identities(self, agent_prefix: str = "") -> set[str]:
        """Identities of the authenticated requests whose User-Agent starts with agent_prefix."""
        return {i for i, agent, status in self.seen if agent.startswith(agent_prefix) and status != 401}

    def refused(self, agent_prefix: str = "") -> int:
        """How many requests whose User-Agent starts with agent_prefix were refused (401)."""
        return sum(1 for i, agent, status in self.seen if agent.startswith(agent_prefix) and status == 401)


def _unauthorized() -> aiohttp.web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }
    return aiohttp.web.json_response(body, status=401)


@contextlib.asynccontextmanager
async def tls_proxy(emulator: Any, pki: Pki, tokens: set[str]) -> AsyncIterator[TlsProxy]:
    upstream = str(emulator.url).rstrip("/")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca_file)
    context.verify_mode = ssl.CERT_OPTIONAL  # a client certificate is one way to log in, tokens another
    proxy = TlsProxy(url="", tokens=tokens)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    def identity(request: aiohttp.web.Request) -> str | None:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        if peer:
            cn = dict(x[0] for x in peer["subject"]).get("commonName")
            return f"cert:{cn}"
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token in proxy.tokens:
            return f"token:{token}"
        return None

    async def handle(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        who = identity(request)
        agent = request.headers.get("User-Agent", "")
        if who is None:
            proxy.seen.append(("anonymous", agent, 401))
            return _unauthorized()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept", "user-agent")
        }
        async with session.request(
            request.method, upstream + request.path_qs, headers=headers, data=await request.read()
        ) as answer:
            proxy.seen.append((who, agent, answer.status))
            response = aiohttp.web.StreamResponse(
                status=answer.status,
                headers={"Content-Type": answer.headers.get("Content-Type", "application/json")},
            )
            # A client may go away mid-answer: kopf closes its session, watches included, when it
            # logs in again after a 401. Nothing is left to send to; that is no proxy error.
            with contextlib.suppress(ConnectionResetError):
                await response.prepare(request)
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
            return response

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    proxy.url = f"https://127.0.0.1:{port}"
    try:
        yield proxy
    finally:
        await runner.cleanup()
        await session.close()
