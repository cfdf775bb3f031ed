"""DKIM signing: keys loaded once, dkimpy for canonicalisation and the header, OpenSSL for RSA.

dkimpy computes the canonical hashes and builds the DKIM-Signature header; its RSA step is pure
Python (about 6 ms per RSA-2048 signature), so the relay hands dkimpy a signer object whose
`sign(digest)` runs RSASSA-PKCS1-v1_5 over the prehashed SHA-256 digest in OpenSSL through
`cryptography`, on the key parsed once at start-up. Ed25519 (RFC 8463) uses dkimpy's own path.

Headers signed (RFC 6376 section 5.4, STANDARDS items 12-13): From, Reply-To, Subject, Date, To,
Cc, Message-ID, the MIME headers, List-Unsubscribe, List-Unsubscribe-Post; From, Subject, Date,
To, List-Unsubscribe and List-Unsubscribe-Post are listed once more than they occur, so none can
be added later. Canonicalisation relaxed/relaxed, no `l=`, `t=` set.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim import canonicalization

from relay.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from relay.config import DkimKeyConfig

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
MIN_RSA_BITS = 1024
RECOMMENDED_RSA_BITS = 2048
SIGNED = (
    "from",
    "reply-to",
    "subject",
    "date",
    "to",
    "cc",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
OVERSIGNED = frozenset(
    ("from", "subject", "date", "to", "list-unsubscribe", "list-unsubscribe-post")
)
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)


# dkimpy's sign() parses an RSA key's PEM at every signature (pure-Python ASN.1, about 0.3 ms of
# the 1.7 ms a signature takes); the relay parsed the key once, at start-up, into OpenSSL. So an
# RSA signature enters sign() on the Ed25519 path, which only decodes this placeholder seed and
# hashes with SHA-256 as rsa-sha256 does, and _FastDKIM.gen_header restores a=rsa-sha256 before
# the header is hashed and signed by OpenSSL.
_RSA_VIA_ED25519 = b"ed25519-sha256"
_PLACEHOLDER_SEED = base64.b64encode(bytes(32))


class _Relaxed(canonicalization.Relaxed):  # type: ignore[misc]
    """dkimpy's relaxed canonicalisation, without its regular expressions where they change nothing.

    dkimpy replaces every run of spaces and tabs in the body with one space, by a regular
    expression that matches (and rewrites) every single space of the text: most of a signature's
    cost for a newsletter. A body without tabs or double spaces has no run to compress, and at
    most one space before each line end; for it, two byte searches and a replace give the same
    bytes (a property test holds this against dkimpy's own). Any other body takes dkimpy's path.
    """

    @staticmethod
    def canonicalize_body(body: bytes) -> bytes:
        """RFC 6376 section 3.4.4, exactly as dkimpy computes it."""
        if b"\t" in body or b"  " in body:
            result: bytes = canonicalization.Relaxed.canonicalize_body(body)
            return result
        if b" \r\n" in body:
            body = body.replace(b" \r\n", b"\r\n")
        return bytes(
            canonicalization.correct_empty_body(canonicalization.strip_trailing_lines(body))
        )


# dkimpy looks canonicalisations up by name (c=relaxed) in this table, for signing and verifying
# alike: the entry is the same algorithm, faster (see _Relaxed).
canonicalization.ALGORITHMS[b"relaxed"] = _Relaxed


@dataclass(frozen=True)
class _Signature:
    signature: bytes


class _OpenSslRsa:
    """What dkimpy's signing step needs (`sign(digest).signature`), done by OpenSSL."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        """Sign with `key`."""
        self.key = key

    def sign(self, digest: bytes) -> _Signature:
        """RSASSA-PKCS1-v1_5 over a SHA-256 digest: DKIM's rsa-sha256."""
        return _Signature(self.key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256())))


class _FastDKIM(dkim.DKIM):  # type: ignore[misc]
    """dkimpy's DKIM whose RSA step runs in OpenSSL on a preloaded key."""

    def __init__(self, message: bytes, rsa_signer: _OpenSslRsa | None) -> None:
        """Sign `message`; RSA keys through `rsa_signer`."""
        super().__init__(message, linesep=b"\r\n")
        self._rsa_signer = rsa_signer
        self.signature_algorithm: bytes = b"rsa-sha256"

    def set_message(self, message: bytes | None) -> None:
        """Split the header fields off as dkimpy does, without splitting the body into lines.

        dkimpy splits the whole message at every line end and joins the body back with CRLF;
        for a message whose line ends are all CRLF (the DKIM policy's output), the body is the
        bytes after the blank line as they are. Any other message takes dkimpy's path.
        """
        end = message.find(b"\r\n\r\n") if message else -1
        if message is None or end == -1 or message.count(b"\n") != message.count(b"\r\n"):
            super().set_message(message)
            return
        super().set_message(message[: end + 2])
        self.body = message[end + 4 :]

    def gen_header(  # noqa: PLR0917 - dkimpy's signature
        self,
        fields: list[tuple[bytes, bytes]],
        include_headers: tuple[bytes, ...],
        canon_policy: object,
        header_name: bytes,
        pk: object,
        standardize: bool = False,  # noqa: FBT001, FBT002
    ) -> bytes:
        """Build the header as dkimpy does, signing RSA through OpenSSL."""
        if self._rsa_signer is None:
            result: bytes = super().gen_header(
                fields, include_headers, canon_policy, header_name, pk, standardize
            )
            return result
        # dkimpy signs with `pk.sign(digest).signature` on this branch, and both algorithms hash
        # with SHA-256. The signature entered sign() on the Ed25519 path (see _RSA_VIA_ED25519):
        # the tag is put back to a=rsa-sha256 before the header is hashed and signed.
        for index, (tag, _) in enumerate(fields):
            if tag == b"a":
                fields[index] = (b"a", b"rsa-sha256")
        algorithm: bytes = self.signature_algorithm
        self.signature_algorithm = b"ed25519-sha256"
        try:
            signed: bytes = super().gen_header(
                fields, include_headers, canon_policy, header_name, self._rsa_signer, standardize
            )
            return signed
        finally:
            self.signature_algorithm = algorithm


@dataclass(frozen=True)
class SigningKey:
    """One configured key: what dkimpy needs, and the OpenSSL key for RSA."""

    domain: str
    selector: str
    algorithm: Algorithm
    dkimpy_key: bytes  # PEM (RSA) or base64 seed (Ed25519), as dkimpy takes them
    public_record: str  # the DNS TXT value: v=DKIM1; k=...; p=...
    rsa_signer: _OpenSslRsa | None
    bits: int | None

    @property
    def dns_name(self) -> str:
        """Where the public key is published."""
        return f"{self.selector}._domainkey.{self.domain}"


def _public_record(public: rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> str:
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def load_key_data(
    data: bytes, algorithm: Algorithm
) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """Parse a PEM key, or (Ed25519) a base64 32-byte seed as in RFC 8463."""
    if b"-----BEGIN" in data:
        key = serialization.load_pem_private_key(data, password=None)
    elif algorithm == "ed25519-sha256":
        key = ed25519.Ed25519PrivateKey.from_private_bytes(
            base64.b64decode(data.strip(), validate=True)
        )
    else:
        raise ValueError("expected a PEM private key")
    wanted = rsa.RSAPrivateKey if algorithm == "rsa-sha256" else ed25519.Ed25519PrivateKey
    if not isinstance(key, wanted):
        raise ValueError(f"the key is not a {algorithm} key")  # noqa: TRY004 - a config value error
    return key


def make_key(domain: str, selector: str, algorithm: Algorithm, data: bytes) -> SigningKey:
    """A signing key from its file's bytes; ValueError when it is unusable."""
    key = load_key_data(data, algorithm)
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"RSA keys need at least {MIN_RSA_BITS} bits, this one has {key.key_size}"
            )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        return SigningKey(
            domain,
            selector,
            algorithm,
            pem,
            _public_record(key.public_key()),
            _OpenSslRsa(key),
            key.key_size,
        )
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return SigningKey(
        domain,
        selector,
        algorithm,
        base64.b64encode(seed),
        _public_record(key.public_key()),
        None,
        None,
    )


def load_keys(configured: list[DkimKeyConfig]) -> tuple[list[SigningKey], list[str]]:
    """Every configured key, and warnings; ConfigError names each unusable key's location."""
    keys: list[SigningKey] = []
    problems: list[str] = []
    warnings: list[str] = []
    for index, item in enumerate(configured):
        where = f"dkim[{index}].private_key"
        try:
            data = item.private_key.read_bytes()
            key = make_key(item.domain, item.selector, item.algorithm, data)
        except OSError as exc:
            problems.append(f"{where}: cannot read {item.private_key}: {exc.strerror}")
            continue
        except (ValueError, TypeError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        if key.bits is not None and key.bits < RECOMMENDED_RSA_BITS:
            warnings.append(
                f"{where}: a {key.bits}-bit RSA key; use {RECOMMENDED_RSA_BITS} bits or more"
            )
        keys.append(key)
    if problems:
        raise ConfigError(problems)
    return keys, warnings


def header_names(message: bytes) -> list[str]:
    """The lower-case names of the message's header fields, in order."""
    head = message.split(b"\r\n\r\n", 1)[0]
    return [m.group(1).decode("ascii").lower() for m in _FIELD.finditer(head)]


def signed_headers(message: bytes) -> list[bytes]:
    """The `h=` list: present headers of SIGNED, the oversigned ones once more than they occur."""
    present = header_names(message)
    include: list[bytes] = []
    for name in SIGNED:
        count = present.count(name) + (1 if name in OVERSIGNED else 0)
        include += [name.encode()] * count
    return include


class Signer:
    """Signs messages with every key configured for the From domain."""

    def __init__(self, keys: list[SigningKey]) -> None:
        """Index `keys` by domain."""
        self.keys: dict[str, list[SigningKey]] = {}
        for key in keys:
            self.keys.setdefault(key.domain, []).append(key)

    def has_key(self, domain: str) -> bool:
        """Whether `domain` has at least one key."""
        return domain in self.keys

    def sign(self, message: bytes, domain: str) -> bytes:
        """`message` (CRLF) with one DKIM-Signature per key of `domain` prepended."""
        include = signed_headers(message)
        signatures = []
        for key in self.keys.get(domain, []):
            signer = _FastDKIM(message, key.rsa_signer)
            rsa = key.rsa_signer is not None
            signatures.append(
                signer.sign(
                    key.selector.encode(),
                    key.domain.encode(),
                    _PLACEHOLDER_SEED if rsa else key.dkimpy_key,
                    signature_algorithm=_RSA_VIA_ED25519 if rsa else key.algorithm.encode(),
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=include,
                    length=False,
                )
            )
        return b"".join(reversed(signatures)) + message


def generate_key(algorithm: Algorithm, bits: int = RECOMMENDED_RSA_BITS) -> bytes:
    """A new private key, PEM (PKCS#8)."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa-sha256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_key(path: Path, pem: bytes) -> None:
    """Write a private key readable by its owner only (mode 0600), never overwriting one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
