"""Real certificates, laid out as cert-manager lays out its Secrets.

A certificate directory holds ``tls.crt`` (the leaf), ``tls.key`` (its private
key, mode 0600) and ``ca.crt`` (the issuing CA), the three keys of a
cert-manager ``kubernetes.io/tls`` Secret. The tests, the benchmarks' server
and ``hack/local-datastore.sh`` all make their certificates here, so the layout
has one definition.

Run as a module to write a layout on disk (used by ``hack/local-datastore.sh``)::

    python -m devsupport.ca DIR --server-name localhost \\
        --client nvsentinel --client nvsentinel_migrator

``DIR`` then holds ``ca/`` (CA certificate and key), ``server/`` and
``clients/<user>/``. Existing files are kept, so running it again is safe and
only adds what is missing.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
CA_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"

#: The names every server certificate covers: what loopback clients dial.
LOOPBACK_DNS_NAMES: tuple[str, ...] = ("localhost",)
LOOPBACK_IP_ADDRESSES: tuple[str, ...] = ("127.0.0.1",)

_VALIDITY = datetime.timedelta(days=30)
_BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class CertDir:
    """A directory laid out like a cert-manager TLS Secret."""

    path: Path

    @property
    def cert(self) -> Path:
        return self.path / CERT_FILE

    @property
    def key(self) -> Path:
        return self.path / KEY_FILE

    @property
    def ca(self) -> Path:
        return self.path / CA_FILE


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def common_name(self) -> str:
        attrs = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attrs[0].value)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (0600), from creation on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o644)


def new_ca(common_name: str = "nvsentinel-test-ca") -> CertificateAuthority:
    """A fresh self-signed CA (ECDSA P-256, valid 30 days)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate=cert, private_key=key)


def save_ca(ca: CertificateAuthority, directory: Path) -> None:
    """Write the CA's certificate (``ca.crt``) and key (``ca.key``, 0600) to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    _write_public(directory / CA_FILE, ca.cert_pem)
    write_private(directory / CA_KEY_FILE, _key_pem(ca.private_key))


def load_ca(directory: Path) -> CertificateAuthority:
    """Read a CA written by :func:`save_ca`."""
    cert = x509.load_pem_x509_certificate((directory / CA_FILE).read_bytes())
    key = serialization.load_pem_private_key((directory / CA_KEY_FILE).read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{directory / CA_KEY_FILE}: expected an EC private key")
    return CertificateAuthority(certificate=cert, private_key=key)


def _issue(
    ca: CertificateAuthority,
    directory: Path,
    common_name: str,
    *,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    usage: x509.ObjectIdentifier,
) -> CertDir:
    key = _new_key()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.private_key, hashes.SHA256())

    directory.mkdir(parents=True, exist_ok=True)
    out = CertDir(directory)
    _write_public(out.cert, cert.public_bytes(serialization.Encoding.PEM))
    write_private(out.key, _key_pem(key))
    _write_public(out.ca, ca.cert_pem)
    return out


def issue_server_cert(
    ca: CertificateAuthority,
    directory: Path,
    extra_dns_names: Sequence[str] = (),
    extra_ip_addresses: Sequence[str] = (),
) -> CertDir:
    """A server certificate for ``localhost`` and ``127.0.0.1`` plus any extra names."""
    dns_names = [*LOOPBACK_DNS_NAMES, *extra_dns_names]
    return _issue(
        ca,
        directory,
        dns_names[0],
        dns_names=dns_names,
        ip_addresses=[*LOOPBACK_IP_ADDRESSES, *extra_ip_addresses],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )


def issue_client_cert(ca: CertificateAuthority, directory: Path, user: str) -> CertDir:
    """A client certificate whose CN is the database user ``user``."""
    return _issue(
        ca,
        directory,
        user,
        dns_names=(),
        ip_addresses=(),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )


@dataclass
class Pki:
    """One CA with its server and clients, and a stranger CA (a test session's, a benchmark's).

    ``wrong_ca`` is unrelated to ``ca``: certificates it issues must be refused
    where ``ca``'s are trusted, and servers it does not sign must fail
    verification against it.
    """

    root: Path
    ca: CertificateAuthority
    wrong_ca: CertificateAuthority
    server: CertDir
    _clients: dict[tuple[str, bool], CertDir] = field(default_factory=dict)

    @property
    def ca_file(self) -> Path:
        return self.root / "ca" / CA_FILE

    @property
    def wrong_ca_file(self) -> Path:
        return self.root / "wrong-ca" / CA_FILE

    def client(self, user: str) -> CertDir:
        """The client certificate directory for ``user`` (CN = ``user``), made on first use."""
        return self._client(user, wrong=False)

    def wrong_client(self, user: str) -> CertDir:
        """A client certificate for ``user`` signed by the unrelated CA."""
        return self._client(user, wrong=True)

    def _client(self, user: str, *, wrong: bool) -> CertDir:
        key = (user, wrong)
        if key not in self._clients:
            ca = self.wrong_ca if wrong else self.ca
            sub = "wrong-clients" if wrong else "clients"
            self._clients[key] = issue_client_cert(ca, self.root / sub / user, user)
        return self._clients[key]


def make_pki(root: Path, extra_server_names: Sequence[str] = ()) -> Pki:
    """A fresh CA, a stranger CA and a loopback server certificate under ``root``."""
    ca = new_ca("nvsentinel-test-ca")
    wrong_ca = new_ca("nvsentinel-unrelated-ca")
    save_ca(ca, root / "ca")
    save_ca(wrong_ca, root / "wrong-ca")
    server = issue_server_cert(ca, root / "server", extra_server_names)
    return Pki(root=root, ca=ca, wrong_ca=wrong_ca, server=server)


# -- command line: one layout for hack/local-datastore.sh ---------------------------


def ensure_layout(
    root: Path, server_names: Sequence[str], clients: Sequence[str]
) -> dict[str, CertDir]:
    """Create what is missing of ``root/{ca,server,clients/<user>}``; keep what exists."""
    ca_dir = root / "ca"
    if (ca_dir / CA_FILE).exists() and (ca_dir / CA_KEY_FILE).exists():
        ca = load_ca(ca_dir)
    else:
        ca = new_ca("nvsentinel-local-ca")
        save_ca(ca, ca_dir)
    made: dict[str, CertDir] = {}
    server_dir = CertDir(root / "server")
    if not (server_dir.cert.exists() and server_dir.key.exists()):
        server_dir = issue_server_cert(ca, server_dir.path, server_names)
    made["server"] = server_dir
    for user in clients:
        client_dir = CertDir(root / "clients" / user)
        if not (client_dir.cert.exists() and client_dir.key.exists()):
            client_dir = issue_client_cert(ca, client_dir.path, user)
        made[user] = client_dir
    return made


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devsupport.ca",
        description=(
            "Write a CA, a server certificate (localhost, 127.0.0.1 and any --server-name) "
            "and client certificates (CN = --client user) under DIR, laid out like "
            "cert-manager Secrets (tls.crt, tls.key 0600, ca.crt). Existing files are kept."
        ),
    )
    parser.add_argument("directory", type=Path, metavar="DIR")
    parser.add_argument("--server-name", action="append", default=[], metavar="NAME")
    parser.add_argument("--client", action="append", default=[], metavar="USER")
    args = parser.parse_args(argv)
    names = [n for n in args.server_name if n not in LOOPBACK_DNS_NAMES]
    for label, cert_dir in ensure_layout(args.directory, names, args.client).items():
        print(f"{label}\t{cert_dir.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
