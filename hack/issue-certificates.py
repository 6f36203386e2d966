#!/usr/bin/env python3
"""Issues the Secrets that cert-manager Certificate objects ask for, on a
cluster without cert-manager (hack/local-cluster.sh): for every Certificate
in the namespace whose Secret is missing (or every one, with --renew), a key
and a certificate with the Certificate's subject, names, usages and lifetime,
signed by a local CA, stored as a kubernetes.io/tls Secret with the keys
tls.crt, tls.key and ca.crt; the Certificate's status is set Ready.

The CA lives in the Secret kube-system/nvsentinel-local-issuer-ca (made on
first use). It is not cert-manager: Issuers are ignored (every certificate is
signed by this one CA) and nothing renews unless asked to (--renew).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import re
import sys
import time
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

CA_NAMESPACE = "kube-system"
CA_SECRET = "nvsentinel-local-issuer-ca"
GROUP, VERSION, PLURAL = "cert-manager.io", "v1", "certificates"
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def parse_duration(text: str | None, default: datetime.timedelta) -> datetime.timedelta:
    """A Go duration (e.g. 2160h0m0s, 24h, 30m) as a timedelta."""
    if not text:
        return default
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    seconds = sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)([hms])", text))
    return datetime.timedelta(seconds=seconds) if seconds else default


def new_key(spec: dict[str, Any]) -> PrivateKey:
    algorithm = (spec.get("privateKey") or {}).get("algorithm", "RSA")
    size = (spec.get("privateKey") or {}).get("size")
    if algorithm == "ECDSA":
        curve = {384: ec.SECP384R1(), 521: ec.SECP521R1()}.get(size or 256, ec.SECP256R1())
        return ec.generate_private_key(curve)
    return rsa.generate_private_key(public_exponent=65537, key_size=size or 2048)


def key_pem(key: PrivateKey, spec: dict[str, Any]) -> bytes:
    encoding = (spec.get("privateKey") or {}).get("encoding", "PKCS1")
    fmt = (
        serialization.PrivateFormat.PKCS8
        if encoding == "PKCS8"
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def load_or_make_ca(core: client.CoreV1Api) -> tuple[x509.Certificate, PrivateKey]:
    try:
        secret = core.read_namespaced_secret(CA_SECRET, CA_NAMESPACE)
        data: dict[str, bytes | str] = secret.data or {}
        cert = x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))
        key = serialization.load_pem_private_key(base64.b64decode(data["tls.key"]), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        return cert, key
    except ApiException as exc:
        if exc.status != 404:
            raise
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nvsentinel-local-issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=CA_SECRET, namespace=CA_NAMESPACE),
        type="kubernetes.io/tls",
        data={
            "tls.crt": b64(cert.public_bytes(serialization.Encoding.PEM)),
            "tls.key": b64(key_pem(key, {"privateKey": {"encoding": "PKCS8"}})),
        },
    )
    core.create_namespaced_secret(CA_NAMESPACE, body)
    return cert, key


def issue(
    spec: dict[str, Any], ca_cert: x509.Certificate, ca_key: PrivateKey
) -> tuple[bytes, bytes, datetime.datetime, datetime.datetime]:
    key = new_key(spec)
    attributes = (
        [x509.NameAttribute(NameOID.COMMON_NAME, spec["commonName"])]
        if spec.get("commonName")
        else []
    )
    for org in (spec.get("subject") or {}).get("organizations") or []:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in spec.get("dnsNames") or []]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in spec.get("ipAddresses") or []]
    usages = set(spec.get("usages") or ["digital signature", "key encipherment"])
    extended = [
        oid
        for usage, oid in (
            ("server auth", ExtendedKeyUsageOID.SERVER_AUTH),
            ("client auth", ExtendedKeyUsageOID.CLIENT_AUTH),
        )
        if usage in usages
    ]
    is_ca = bool(spec.get("isCA"))
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + parse_duration(spec.get("duration"), datetime.timedelta(days=90))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature="digital signature" in usages or not is_ca,
                content_commitment=False,
                key_encipherment="key encipherment" in usages,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if extended:
        builder = builder.add_extension(x509.ExtendedKeyUsage(extended), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem(key, spec), not_before, not_after


def reconcile(
    api: client.ApiClient, namespace: str, renew: bool, ca: tuple[x509.Certificate, PrivateKey]
) -> list[str]:
    """Issue what is missing (or everything with renew); returns the Secrets written."""
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    written = []
    listing = cast(
        "dict[str, Any]", custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    )
    certificates: list[dict[str, Any]] = listing["items"]
    ca_pem = ca[0].public_bytes(serialization.Encoding.PEM)
    for certificate in certificates:
        spec, name = certificate["spec"], certificate["metadata"]["name"]
        secret_name = spec["secretName"]
        try:
            core.read_namespaced_secret(secret_name, namespace)
            exists = True
        except ApiException as exc:
            if exc.status != 404:
                raise
            exists = False
        if exists and not renew:
            continue
        crt, key, not_before, not_after = issue(spec, *ca)
        template = spec.get("secretTemplate") or {}
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=secret_name,
                namespace=namespace,
                labels=template.get("labels"),
                annotations={
                    **(template.get("annotations") or {}),
                    "cert-manager.io/certificate-name": name,
                },
            ),
            type="kubernetes.io/tls",
            data={"tls.crt": b64(crt), "tls.key": b64(key), "ca.crt": b64(ca_pem)},
        )
        if exists:
            core.replace_namespaced_secret(secret_name, namespace, body)
        else:
            core.create_namespaced_secret(namespace, body)
        stamp = "%Y-%m-%dT%H:%M:%SZ"
        status = {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "Ready",
                        "message": "issued by hack/issue-certificates.py",
                        "lastTransitionTime": datetime.datetime.now(datetime.UTC).strftime(stamp),
                    }
                ],
                "notBefore": not_before.strftime(stamp),
                "notAfter": not_after.strftime(stamp),
            }
        }
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, status
        )
        written.append(secret_name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument(
        "--renew", action="store_true", help="issue new Secrets for every Certificate"
    )
    parser.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        help="keep issuing Secrets for new Certificates for this long (0: until stopped)",
    )
    args = parser.parse_args()
    api = config.new_client_from_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    ca = load_or_make_ca(client.CoreV1Api(api))
    deadline = None if not args.watch else time.monotonic() + args.watch
    while True:
        try:
            for secret in reconcile(api, args.namespace, args.renew, ca):
                print(f"issue-certificates: issued Secret {args.namespace}/{secret}", flush=True)
        except ApiException as exc:
            if args.watch is None or exc.status not in (403, 404, 409):
                raise
        args.renew = False
        if args.watch is None or (deadline is not None and time.monotonic() > deadline):
            return
        time.sleep(2)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
