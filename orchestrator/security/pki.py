"""The fleet certificate authority: device client certificates, the broker's server
certificate and the certificate revocation list (CRL) Mosquitto checks.

Everything is ECDSA P-256 / SHA-256: small certificates, fast handshakes on small devices,
supported by every TLS stack Mosquitto and the device clients use. Files are PEM; private
keys are written with mode 0600 and never logged.

Whoever holds ``ca.key`` can mint an identity for any device id *and* for the orchestrator's
username (Mosquitto maps the certificate CN to the username), so the key belongs on the
orchestrator host only, never on the broker host if they are split (the broker needs only
``ca.pem`` and ``crl.pem``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetpush_common.atomic import atomic_write, check_private, make_private_dir

__all__ = ["CA_CERT", "CA_KEY", "CRL", "FleetCA", "IssuedCert"]

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CRL = "crl.pem"

# Devices live for years and many have no way to renew a certificate unattended; an expired
# client certificate locks a device out for good, so client certificates are long-lived and
# revocation (the CRL) is what takes access away.
CLIENT_DAYS = 3650
SERVER_DAYS = 825
CA_DAYS = 7300
# OpenSSL rejects *every* client once the CRL's nextUpdate has passed ("CRL has expired"), so
# the CRL is re-signed on every change and on every broker start, and given a long lifetime.
CRL_DAYS = 3650
# Server certificate CN: not a valid device id (it has spaces), so even if this certificate
# were presented as a client certificate its CN could never match a broker identity.
SERVER_CN = "fleetpush broker"


def _now() -> dt.datetime:
    # Backdate a little so a device whose clock is slightly behind accepts fresh certificates.
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class IssuedCert:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    serial: int

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write the certificate (0644) and the key (0600) atomically."""
        atomic_write(cert_path, self.cert_pem, mode=0o644)
        atomic_write(key_path, self.key_pem, mode=0o600)


@dataclass(frozen=True)
class FleetCA:
    """A self-signed CA kept in ``directory`` as ``ca.pem``, ``ca.key`` and ``crl.pem``."""

    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    @property
    def key_path(self) -> Path:
        return self.directory / CA_KEY

    @property
    def crl_path(self) -> Path:
        return self.directory / CRL

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, directory: Path, *, name: str = "fleetpush fleet CA") -> FleetCA:
        """Create a new CA and an empty CRL in ``directory``; refuses to overwrite one."""
        directory = Path(directory)
        if (directory / CA_KEY).exists():
            raise FileExistsError(f"{directory / CA_KEY} exists; load it instead")
        make_private_dir(directory)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        # Key first: a crash between the writes leaves a key without a certificate, which
        # load() reports, rather than a certificate whose key is lost.
        atomic_write(directory / CA_KEY, _key_pem(key), mode=0o600)
        atomic_write(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
        ca = cls(directory, cert, key)
        ca.write_crl(())
        return ca

    @classmethod
    def load(cls, directory: Path) -> FleetCA:
        """Load the CA kept in ``directory``."""
        directory = Path(directory)
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        check_private(directory / CA_KEY, "fleet CA key")
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{directory / CA_KEY}: not an EC private key")
        return cls(directory, cert, key)

    @classmethod
    def load_or_create(cls, directory: Path, *, name: str = "fleetpush fleet CA") -> FleetCA:
        """The CA in ``directory``, created on first use."""
        if (Path(directory) / CA_KEY).exists():
            return cls.load(directory)
        return cls.create(directory, name=name)

    def _issue(
        self,
        common_name: str,
        days: int,
        usage: x509.ObjectIdentifier,
        sans: Sequence[x509.GeneralName] = (),
    ) -> IssuedCert:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            # The EKU keeps a client certificate from serving as a broker certificate (a
            # device could otherwise impersonate the broker to its peers) and vice versa.
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), False)
        cert = builder.sign(self.key, hashes.SHA256())
        return IssuedCert(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), serial)

    def issue_client(self, common_name: str, *, days: int = CLIENT_DAYS) -> IssuedCert:
        """A client certificate whose CN is the broker username (the device id)."""
        return self._issue(common_name, days, ExtendedKeyUsageOID.CLIENT_AUTH)

    def issue_server(self, hostnames: Iterable[str], *, days: int = SERVER_DAYS) -> IssuedCert:
        """A broker certificate valid for ``hostnames`` (DNS names or IP addresses)."""
        sans: list[x509.GeneralName] = []
        for h in dict.fromkeys(hostnames):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        if not sans:
            raise ValueError("a server certificate needs at least one host name")
        return self._issue(SERVER_CN, days, ExtendedKeyUsageOID.SERVER_AUTH, sans)

    def write_crl(self, revoked_serials: Iterable[int], *, days: int = CRL_DAYS) -> Path:
        """Sign and write ``crl.pem`` listing ``revoked_serials``; return its path."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now)
            .next_update(now + dt.timedelta(days=days))
            # An increasing CRL number (the clock in ns) tells which of two CRLs is newer.
            .add_extension(x509.CRLNumber(time.time_ns()), critical=False)
        )
        for serial in sorted(set(revoked_serials)):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        atomic_write(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        return self.crl_path
