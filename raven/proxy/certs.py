"""Certificates of the proxy: a cluster CA, short-lived leaves issued from it, TLS contexts.

Identities (docs/proxy.md):
- agents (proxy servers and proxy clients) hold a leaf with CN=<node name>,
  O=raven:proxy-agent; the two ends of a tunnel accept only that organisation;
- the API server (or any caller of the server-facing port) holds a leaf with
  O=raven:proxy-user; the server-facing port accepts only that organisation, so an agent's
  certificate cannot be used to reach kubelets.
Rules kept: keys are generated here (ECDSA P-256) and never written anywhere but a private
temporary directory that lives only while `ssl` loads them; time is an argument of every
function that decides validity (`issue(..., now)`, `renew_at`).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import ssl
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ORG_AGENT = "raven:proxy-agent"  # proxy servers and proxy clients
ORG_USER = "raven:proxy-user"  # callers of the server-facing port (the API server)
CA_SECRET_NAMESPACE = "kube-system"
CA_SECRET_NAME = "raven-proxy-ca"  # type kubernetes.io/tls: tls.crt, tls.key
RENEW_FRACTION = 2 / 3  # renew a leaf once this much of its lifetime has passed


class CertError(Exception):
    """CA material or a certificate is unusable; the message names the file or object."""


@dataclass(frozen=True)
class CA:
    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


@dataclass(frozen=True)
class Leaf:
    cert_pem: bytes
    key_pem: bytes
    not_before: float  # unix seconds (a minute before issue, for clock skew)
    not_after: float
    serial: int
    issued_at: float = 0.0

    def renew_at(self) -> float:
        return renew_at(self.issued_at or self.not_before, self.not_after)


def renew_at(issued: float, not_after: float, fraction: float = RENEW_FRACTION) -> float:
    """When to replace a leaf: well before it expires, so a slow API or a restart is covered."""
    return issued + (not_after - issued) * fraction


def _unix(when: dt.datetime) -> float:
    return when.replace(tzinfo=dt.UTC).timestamp() if when.tzinfo is None else when.timestamp()


def make_ca(common_name: str, lifetime: float, now: float) -> CA:
    """A new self-signed CA (labs and tests; a cluster keeps one in Secret raven-proxy-ca)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = dt.datetime.fromtimestamp(now - 60, dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(dt.datetime.fromtimestamp(now + lifetime, dt.UTC))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    return CA(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_ca(cert_pem: bytes, key_pem: bytes, where: str) -> CA:
    """Check that the PEM pair is a CA certificate and its key; CertError naming `where`."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertError(f"{where}: not a PEM certificate and unencrypted key: {exc}") from exc
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is None or not basic.ca:
        raise CertError(f"{where}: the certificate is not a CA (BasicConstraints ca=true)")
    if key.public_key().public_bytes(serialization.Encoding.DER,  # type: ignore[union-attr]
                                     serialization.PublicFormat.SubjectPublicKeyInfo) != \
            cert.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CertError(f"{where}: the key does not belong to the certificate")
    return CA(cert_pem, key_pem)


def load_ca_files(cert_path: Path, key_path: Path) -> CA:
    try:
        return load_ca(cert_path.read_bytes()[:1 << 20], key_path.read_bytes()[:1 << 20],
                       f"CA {cert_path} / {key_path}")
    except OSError as exc:
        raise CertError(f"CA {cert_path} / {key_path}: {exc.strerror or exc}") from exc


def ca_from_secret(obj: Mapping[str, Any]) -> CA:
    """The CA of a kubernetes.io/tls Secret (data tls.crt and tls.key, base64)."""
    meta = obj.get("metadata") or {}
    where = f"Secret {meta.get('namespace', '?')}/{meta.get('name', '?')}"
    data = obj.get("data") or {}
    try:
        cert = base64.b64decode(str(data["tls.crt"]), validate=True)
        key = base64.b64decode(str(data["tls.key"]), validate=True)
    except (KeyError, ValueError) as exc:
        raise CertError(f"{where}: needs base64 data tls.crt and tls.key ({exc})") from exc
    return load_ca(cert, key, where)


def ca_secret(ca: CA) -> dict[str, Any]:
    """The Secret object that carries `ca` (what the lab applies)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": CA_SECRET_NAME, "namespace": CA_SECRET_NAMESPACE},
            "data": {"tls.crt": base64.b64encode(ca.cert_pem).decode(),
                     "tls.key": base64.b64encode(ca.key_pem).decode()}}


def issue(ca: CA, common_name: str, organization: str, lifetime: float, now: float,
          ips: Iterable[str] = ()) -> Leaf:
    """A leaf for both TLS roles (server and client auth), valid from a minute ago (clock skew)
    for `lifetime` seconds, never beyond the CA."""
    ca_cert = ca.cert
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    start = now - 60
    end = min(now + lifetime, _unix(ca_cert.not_valid_after_utc))
    sans: list[x509.GeneralName] = [x509.DNSName(common_name)]
    for ip in ips:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            continue
    serial = x509.random_serial_number()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                                     x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(dt.datetime.fromtimestamp(start, dt.UTC))
            .not_valid_after(dt.datetime.fromtimestamp(end, dt.UTC))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return Leaf(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), start, end, serial,
                now)


def load_leaf(context: ssl.SSLContext, leaf: Leaf) -> None:
    """Put `leaf` into `context` (again: later handshakes use the new one; that is how a
    listening socket rotates without being closed). `ssl` reads keys only from files, so they
    exist for the duration of this call in a private directory."""
    with tempfile.TemporaryDirectory(prefix="raven-proxy-") as tmp:  # mode 0700
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert.write_bytes(leaf.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(leaf.key_pem)
        context.load_cert_chain(cert, key)


def context(ca: CA, leaf: Leaf, server: bool) -> ssl.SSLContext:
    """Mutual TLS 1.2+ trusting only the cluster CA. Names are checked by `peer_identity`
    (peers are addressed by IP, often a NAT's), not by ssl's hostname check."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    load_leaf(ctx, leaf)
    return ctx


def peer_identity(der: bytes | None) -> tuple[str, str]:
    """(common name, organisation) of a verified peer certificate ('' when absent)."""
    if not der:
        return "", ""
    cert = x509.load_der_x509_certificate(der)

    def first(oid: x509.ObjectIdentifier) -> str:
        values = cert.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    return first(NameOID.COMMON_NAME), first(NameOID.ORGANIZATION_NAME)


def not_after(der: bytes) -> float:
    """notAfter of a DER certificate, unix seconds."""
    return _unix(x509.load_der_x509_certificate(der).not_valid_after_utc)


def user_context(ca_cert: Path, ca_key: Path, now: float, common_name: str = "kube-apiserver",
                 lifetime: float = 24 * 3600) -> ssl.SSLContext:
    """The TLS client context for the server-facing port, from the CA files (what the API
    server uses with `raven.proxy.dial.open_tunnel`). Call again before `lifetime` ends."""
    ca = load_ca_files(ca_cert, ca_key)
    return context(ca, issue(ca, common_name, ORG_USER, lifetime, now), server=False)
