# -*- test-case-name: tests.unit.net.test_tls -*-
"""
TLS for SIP connections: the trusted CAs and our own certificate, loaded
once at start-up, and per SIP domain a client connection creator that
checks the server's identity as RFC 5922 §7 says, not as HTTPS does:

  - the reference identity is the SIP domain (of the registrar or proxy
    URI), never the SRV target or the address DNS gave;
  - the certificate's identities are its subjectAltName C{URI:sip:domain}
    entries; its C{DNS:} entries only when it has no C{sip:} URI; its
    subject CN only when it has no subjectAltName at all;
  - compared case-insensitively, and a wildcard matches nothing.

An IP-literal domain matches the certificate's C{IP:} entries.

Chain failures abort the handshake through OpenSSL's own verification.
The identity is checked in the same verify callback, on the leaf (as
Twisted's own client options do since they dropped the info callback),
so a wrong certificate aborts the handshake too, before any application
data is sent.  The reason reaches the protocol's C{connectionLost} as a
L{TlsPeerError}.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable

import idna
from OpenSSL import SSL
from OpenSSL.crypto import X509
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLContextFactory, IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from uacregistrant.sip.message import printable

_log = Logger(namespace=__name__)

#: The private keys OpenSSL (through pyOpenSSL) can serve a certificate with.
_SigningKey = dsa.DSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey | rsa.RSAPrivateKey
_SIGNING_KEYS = (dsa.DSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey, rsa.RSAPrivateKey)

#: Client creators kept, one per domain (a bound all the same).
CREATORS_MAX = 4096

_V = SSL.X509VerificationCodes
#: Words for the chain errors an operator meets; others are given by number.
_CHAIN_ERRORS = {
    _V.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "issued by an unknown CA",
    _V.ERR_UNABLE_TO_GET_ISSUER_CERT: "issued by an unknown CA",
    _V.ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: "issued by an unknown CA",
    _V.ERR_DEPTH_ZERO_SELF_SIGNED_CERT: "self-signed",
    _V.ERR_SELF_SIGNED_CERT_IN_CHAIN: "chained to an untrusted self-signed CA",
    _V.ERR_CERT_HAS_EXPIRED: "expired",
    _V.ERR_CERT_NOT_YET_VALID: "not yet valid",
    _V.ERR_CERT_SIGNATURE_FAILURE: "badly signed",
    _V.ERR_INVALID_CA: "issued by a certificate that is no CA",
    _V.ERR_INVALID_PURPOSE: "not for TLS servers (extended key usage)",
    _V.ERR_CERT_REVOKED: "revoked",
}


class TlsError(Exception):
    """
    The TLS configuration cannot be used: a file that cannot be read or
    parsed, a key that does not match its certificate, a certificate
    without a key.  The message is one line for the operator.
    """


class TlsPeerError(Exception):
    """The peer's certificate was refused; the message says why, on one line."""


class TlsChainError(TlsPeerError):
    """The peer's certificate chain does not lead to a trusted CA, or is invalid."""


class TlsIdentityError(TlsPeerError):
    """The peer's certificate is valid but not for the SIP domain."""


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """
    Where the TLS material is, and whether peers are verified.

    @ivar ca_file: PEM bundle of trusted CAs; L{None} for the system's store.
    @ivar cert_file: our certificate (PEM; may hold its chain after it), for
        client authentication and for a C{tls:} listen socket.
    @ivar key_file: its private key (PEM, unencrypted).
    @ivar verify: L{False} (C{--tls-no-verify}) checks neither the chain nor
        the name.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True


def _host(domain: str) -> str | ipaddress.IPv4Address | ipaddress.IPv6Address:
    """
    The reference identity: a lower-case ASCII (IDNA) name without a final
    dot, or an IP address.

    @raise ValueError: C{domain} is no valid host name.
    """
    bare = domain[1:-1] if domain.startswith("[") and domain.endswith("]") else domain
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    name = domain.rstrip(".")
    if name.isascii():
        name = name.lower()
    else:
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as e:
            raise ValueError(f"{domain!r} is not a host name: {e}") from None
    if not name:
        raise ValueError(f"{domain!r} is not a host name")
    return name


def _alt_names(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    """
    The subjectAltName extension, or L{None} when there is none.

    @raise ValueError: the certificate's extensions cannot be parsed.
    """
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def _common_names(cert: x509.Certificate) -> list[str]:
    """The subject's CN values."""
    values = (attribute.value for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    return [value if isinstance(value, str) else value.decode("ascii", "replace") for value in values]


def _sip_uris(alt_names: x509.SubjectAlternativeName) -> list[str]:
    """The C{URI:} entries of scheme C{sip}, as they are written."""
    return [uri for uri in alt_names.get_values_for_type(x509.UniformResourceIdentifier) if uri[:4].lower() == "sip:"]


def _sip_domain(uri: str) -> str | None:
    """The domain of a C{sip:domain} URI; L{None} with a user part, port, parameters or headers."""
    rest = uri[4:]
    if not rest or any(c in rest for c in "@:;?/[]"):
        return None
    return rest.rstrip(".").lower()


def identity_matches(cert: x509.Certificate, domain: str) -> bool:
    """
    Whether C{cert} names the SIP domain C{domain} (RFC 5922 §7).

    @param cert: the peer's leaf certificate.
    @param domain: the SIP domain the connection is for, or an IP literal
        (then the certificate's C{IP:} entries are compared).
    @return: L{True} if one of the identities the certificate offers equals
        C{domain}, ignoring case; wildcards match nothing.
    """
    try:
        reference = _host(domain)
        alt_names = _alt_names(cert)
    except ValueError:
        return False
    if not isinstance(reference, str):
        return alt_names is not None and reference in alt_names.get_values_for_type(x509.IPAddress)
    if "*" in reference:
        return False
    if alt_names is None:
        names = _common_names(cert)
    else:
        uris = _sip_uris(alt_names)
        if uris:
            return reference in [_sip_domain(uri) for uri in uris]
        names = alt_names.get_values_for_type(x509.DNSName)
    return reference in [name.rstrip(".").lower() for name in names]


def identities_of(cert: x509.Certificate) -> list[str]:
    """
    What C{cert} offers as identities under RFC 5922 §7, for messages:
    C{"sip:…"} URIs (any, even those refused for a user part), else
    C{"DNS:…"} names, else C{"CN=…"}; and C{"IP:…"} addresses.
    """
    try:
        alt_names = _alt_names(cert)
    except ValueError:
        return []
    if alt_names is None:
        return [_shown(f"CN={name}") for name in _common_names(cert)]
    identities = _sip_uris(alt_names) or [f"DNS:{name}" for name in alt_names.get_values_for_type(x509.DNSName)]
    return [_shown(i) for i in identities] + [f"IP:{ip}" for ip in alt_names.get_values_for_type(x509.IPAddress)]


def _shown(identity: str) -> str:
    """A certificate's name as it may appear in a message: control characters escaped, at most 100 characters."""
    return printable(identity)[:100]


def _peer_of(tls_protocol: TLSMemoryBIOProtocol | None) -> str:
    """C{host:port} of the connection's peer, for messages."""
    try:
        peer = tls_protocol.transport.getPeer()  # type: ignore[union-attr]
        host, port = str(getattr(peer, "host")), int(getattr(peer, "port"))
    except Exception:
        return "the peer"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(IOpenSSLClientConnectionCreator)
class ClientConnectionCreator:
    """
    Makes the OpenSSL connections of TLS clients for one SIP domain: SNI
    with a DNS name, and, when verifying, the RFC 5922 identity check.

    @ivar domain: the SIP domain, as given.
    """

    def __init__(self, context: SSL.Context, domain: str, verify: bool) -> None:
        """
        @param context: the shared client context (trust store, our
            certificate, TLS 1.2 minimum).
        @param domain: the SIP domain (or IP literal) the server must prove.
        @param verify: check the chain and the identity.
        """
        self.domain = domain
        self._context = context
        self._verify = verify
        try:
            host = _host(domain)
        except ValueError:
            host = None  # never matched either
        self._server_name = host.encode("ascii") if isinstance(host, str) else None

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """
        A new client connection for C{tlsProtocol}.

        @param tlsProtocol: the TLS protocol of the connection; its
            C{failVerification} aborts the handshake with our reason.
        """
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        if self._verify:
            connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify_callback())
        else:
            connection.set_verify(SSL.VERIFY_NONE)
        return connection

    def _verify_callback(self) -> Callable[[SSL.Connection, X509, int, int, int], bool]:
        """
        A verify callback for one connection: OpenSSL's verdict on each
        certificate of the chain, and the identity check on the leaf
        (depth 0, which comes last).  A refusal is reported once, through
        the protocol's C{failVerification}.
        """
        domain = self.domain
        reported = False

        def refuse(connection: SSL.Connection, error: TlsPeerError) -> bool:
            nonlocal reported
            if not reported:
                reported = True
                connection.get_app_data().failVerification(Failure(error))
            return False

        def verify(connection: SSL.Connection, certificate: X509, error: int, depth: int, ok: int) -> bool:
            try:
                if not ok:
                    words = _CHAIN_ERRORS.get(error, f"refused (X.509 verification error {error})")
                    which = "certificate" if depth == 0 else f"certificate chain (depth {depth})"
                    return refuse(connection, TlsChainError(f"{which} of {_peer_of(connection.get_app_data())} is {words}"))
                if depth != 0:
                    return True
                leaf = certificate.to_cryptography()
                if identity_matches(leaf, domain):
                    return True
                offered = ", ".join(identities_of(leaf)) or "no identity"
                peer = _peer_of(connection.get_app_data())
                return refuse(connection, TlsIdentityError(f"certificate of {peer} is for {offered}; not for {domain}"))
            except BaseException:
                # An exception must not escape into OpenSSL: log it, refuse.
                _log.failure("while verifying the certificate for {domain}", domain=domain)
                return False

        return verify


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ServerConnectionCreator:
    """
    Makes the OpenSSL connections of a C{tls:} listen socket: our
    certificate, TLS 1.2 or later, no client certificate asked for.
    """

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """A new server connection for C{tlsProtocol}."""
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        return connection

    def getContext(self) -> SSL.Context:
        """The shared server context (for APIs that want a context factory)."""
        return self._context


class TlsContext:
    """
    The loaded TLS configuration: client creators per domain and, with our
    own certificate, the creator of a listening socket's connections.

    @ivar verify: whether peers are verified (as configured).
    @ivar presents_certificate: whether we have a certificate to present.
    """

    def __init__(self, client_context: SSL.Context, server_context: SSL.Context | None, verify: bool) -> None:
        """
        @param client_context: the context of every client connection.
        @param server_context: the context of listening sockets; L{None}
            without a certificate of our own.
        @param verify: whether client connections verify the server.
        """
        self.verify = verify
        self.presents_certificate = server_context is not None
        self._client_context = client_context
        self._server = None if server_context is None else ServerConnectionCreator(server_context)
        self._creators: dict[str, ClientConnectionCreator] = {}

    def client_creator(self, domain: str) -> IOpenSSLClientConnectionCreator:
        """
        The connection creator for TLS clients of the SIP domain C{domain}
        (cached).

        @param domain: the SIP domain of the registrar or proxy URI (not the
            SRV target), or an IP literal.
        """
        creator = self._creators.get(domain)
        if creator is None:
            creator = ClientConnectionCreator(self._client_context, domain, self.verify)
            if len(self._creators) >= CREATORS_MAX:
                del self._creators[next(iter(self._creators))]
            self._creators[domain] = creator
        return creator

    def server_options(self) -> IOpenSSLServerConnectionCreator | None:
        """The connection creator of a C{tls:} listen socket; L{None} without our certificate."""
        return self._server


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TlsError(f"cannot read the {what} {path}: {e.strerror or e}") from None


def _certificates(path: str, what: str) -> list[x509.Certificate]:
    """The certificates of a PEM file, in order."""
    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise TlsError(f"the {what} {path} holds no PEM certificate")
    return certificates


def _private_key(path: str) -> _SigningKey:
    data = _read(path, "TLS key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsError(f"the TLS key file {path} is encrypted: give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsError(f"the TLS key file {path} holds no PEM private key") from None
    if not isinstance(key, _SIGNING_KEYS):
        raise TlsError(f"the TLS key file {path} holds a key of a type TLS cannot use ({type(key).__name__})")
    return key


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _context(method: int, own: tuple[list[x509.Certificate], _SigningKey] | None) -> SSL.Context:
    """A context with TLS 1.2 as the floor, presenting C{own} (chain, key) if given."""
    context = SSL.Context(method)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    if own is not None:
        chain, key = own
        context.use_certificate(chain[0])
        context.use_privatekey(key)
        for extra in chain[1:]:
            context.add_extra_chain_cert(extra)
        context.check_privatekey()
    return context


def load_tls(settings: TlsSettings) -> TlsContext:
    """
    Read the files C{settings} names (blocking: call it once, at start-up).

    Without a CA file the system's store is trusted (OpenSSL's default
    paths, as L{twisted.internet.ssl.platformTrust} does).

    @raise TlsError: a file cannot be read or parsed, the key does not
        match the certificate, or only one of them is given.
    """
    if (settings.cert_file is None) != (settings.key_file is None):
        given, missing = ("certificate", "key") if settings.cert_file is not None else ("key", "certificate")
        raise TlsError(f"a TLS {given} file ({settings.cert_file or settings.key_file}) needs a {missing} file too")
    own = None
    if settings.cert_file is not None and settings.key_file is not None:
        chain = _certificates(settings.cert_file, "TLS certificate file")
        key = _private_key(settings.key_file)
        if _public_der(chain[0].public_key()) != _public_der(key.public_key()):
            raise TlsError(f"the TLS key file {settings.key_file} does not match the certificate {settings.cert_file}")
        own = (chain, key)
    if settings.verify and settings.ca_file is not None:
        _certificates(settings.ca_file, "TLS CA file")  # a readable message for a bad file
    try:
        client = _context(SSL.TLS_CLIENT_METHOD, own)
        if not settings.verify:
            pass  # --tls-no-verify: no trust store
        elif settings.ca_file is None:
            client.set_default_verify_paths()
        else:
            client.load_verify_locations(settings.ca_file)
        server = None
        if own is not None:
            server = _context(SSL.TLS_SERVER_METHOD, own)
            server.set_session_id(b"uacregistrant")
    except SSL.Error as e:
        raise TlsError(f"OpenSSL refuses the TLS configuration: {e}") from None
    return TlsContext(client, server, settings.verify)
