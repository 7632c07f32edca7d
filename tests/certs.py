"""
Throw-away X.509 material for TLS tests: a CA, and server or client
certificates it signs with the subjectAltNames and CN a test chooses,
written as PEM files (EC P-256 keys, unencrypted; valid from an hour ago
for a few days).

    ca = make_ca("Test CA")
    ca_file = ca.write(directory / "ca.pem")
    cert, key = ca.issue(directory / "registrar", dns=["registrar.test"])
    # directory/registrar.crt, directory/registrar.key
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Days a certificate (the CA's too) stays valid.
VALID_DAYS = 3


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)


class Authority:
    """
    A certificate authority: its key and self-signed certificate.

    @ivar certificate: the CA certificate.
    @ivar key: its private key.
    """

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.certificate = certificate
        self.key = key

    @property
    def pem(self) -> bytes:
        """The CA certificate, PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, path: str | Path) -> Path:
        """
        Write the CA certificate (PEM) to C{path}.

        @return: C{path}, as a L{Path}.
        """
        path = Path(path)
        path.write_bytes(self.pem)
        return path

    def sign(
        self,
        public_key: ec.EllipticCurvePublicKey,
        *,
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        sip_uris: Iterable[str] = (),
        common_name: str | None = None,
        client: bool = False,
        days: int = VALID_DAYS,
    ) -> x509.Certificate:
        """
        A leaf certificate for C{public_key}; see L{issue} for the parameters.
        """
        alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in sip_uris]
        alt_names += [x509.DNSName(name) for name in dns]
        alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        not_before, not_after = _validity(days)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name is not None else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if alt_names:
            # An empty subject requires the SAN to be critical (RFC 5280 §4.2.1.6).
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=common_name is None)
        return builder.sign(self.key, hashes.SHA256())

    def issue(
        self,
        path_prefix: str | Path,
        *,
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        sip_uris: Iterable[str] = (),
        common_name: str | None = None,
        client: bool = False,
        days: int = VALID_DAYS,
    ) -> tuple[Path, Path]:
        """
        Make a key and a certificate signed by this CA; write them to
        C{<path_prefix>.crt} and C{<path_prefix>.key} (PEM).

        With no C{dns}, C{ips} nor C{sip_uris} the certificate has no
        subjectAltName extension at all (only the CN names it).

        @param dns: subjectAltName C{DNS:} entries.
        @param ips: subjectAltName C{IP:} entries (IPv4 or IPv6 text).
        @param sip_uris: subjectAltName C{URI:} entries, whole URIs:
            C{"sip:example.com"}.
        @param common_name: the subject CN; L{None} for an empty subject.
        @param client: a client certificate (extended key usage clientAuth
            only); otherwise serverAuth and clientAuth, as a SIP server
            that also dials out needs.
        @param days: validity, from an hour ago.
        @return: the certificate's path and the key's path.
        """
        key = _key()
        certificate = self.sign(
            key.public_key(), dns=dns, ips=ips, sip_uris=sip_uris, common_name=common_name, client=client, days=days
        )
        prefix = str(path_prefix)
        cert_path, key_path = Path(prefix + ".crt"), Path(prefix + ".key")
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.touch(mode=0o600)
        key_path.write_bytes(_key_pem(key))
        return cert_path, key_path


def make_ca(common_name: str = "uacregistrant test CA", days: int = VALID_DAYS) -> Authority:
    """A new self-signed CA named C{common_name}."""
    key = _key()
    name = _name(common_name)
    not_before, not_after = _validity(days)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(certificate, key)
