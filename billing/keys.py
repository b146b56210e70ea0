"""API key format and hashing.

A key is ``fgk_`` + 32 base62 characters of randomness (~190 bits) + a 6-character
base62 CRC32 of the random part. The prefix makes leaked keys greppable by secret
scanners; the checksum lets a typo or a forged key be refused without a database query.
Only an HMAC-SHA256 of the key under the server's secret is stored, so a database dump
alone can neither verify nor recover keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import zlib

KEY_PREFIX = "fgk_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_LEN = 32
_CHECK_LEN = 6
KEY_LEN = len(KEY_PREFIX) + _RANDOM_LEN + _CHECK_LEN
DISPLAY_LEN = len(KEY_PREFIX) + 8


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_LEN)


def generate_api_key() -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LEN))
    return f"{KEY_PREFIX}{body}{_checksum(body)}"


def is_well_formed(key: str) -> bool:
    if len(key) != KEY_LEN or not key.startswith(KEY_PREFIX):
        return False
    body = key[len(KEY_PREFIX) : len(KEY_PREFIX) + _RANDOM_LEN]
    check = key[len(KEY_PREFIX) + _RANDOM_LEN :]
    # Both parts must be in the alphabet before comparing: compare_digest raises on
    # non-ASCII text, and a header can carry any character.
    if any(c not in _ALPHABET for c in body + check):
        return False
    return hmac.compare_digest(check, _checksum(body))


def hash_api_key(key: str, pepper: bytes) -> str:
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_LEN]


def generate_webhook_secret() -> str:
    """Standard Webhooks secret format: ``whsec_`` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
