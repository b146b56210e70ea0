"""API key format, checksum, hashing and webhook secrets (``billing.keys``)."""

from __future__ import annotations

import base64
import re
import string

import pytest

from billing import keys

BASE62 = re.compile(r"^[0-9A-Za-z]+$")
BODY_START = len(keys.KEY_PREFIX)
BODY_END = BODY_START + 32  # 32 random base62 characters, then a 6-character checksum


def _other_char(c: str) -> str:
    """A different base62 character."""
    return "A" if c != "A" else "B"


def test_key_length_constant() -> None:
    assert keys.KEY_LEN == len("fgk_") + 32 + 6 == 42


@pytest.mark.parametrize("_", range(50))
def test_generated_key_format(_: int) -> None:
    key = keys.generate_api_key()
    assert key.startswith("fgk_")
    assert keys.KEY_PREFIX == "fgk_"
    assert len(key) == keys.KEY_LEN
    assert BASE62.match(key[len("fgk_") :])
    assert key.isascii()
    assert keys.is_well_formed(key)


def test_generated_keys_are_unique() -> None:
    generated = {keys.generate_api_key() for _ in range(500)}
    assert len(generated) == 500


def test_generated_keys_use_the_whole_alphabet() -> None:
    """The body is base62 randomness, not hex or a subset."""
    seen: set[str] = set()
    for _ in range(200):
        seen.update(keys.generate_api_key()[BODY_START:BODY_END])
    assert seen == set(string.digits + string.ascii_letters)


@pytest.mark.parametrize("position", [0, 1, 15, 30, 31])
def test_one_character_typo_in_body_is_rejected(position: int) -> None:
    key = keys.generate_api_key()
    i = BODY_START + position
    typo = key[:i] + _other_char(key[i]) + key[i + 1 :]
    assert len(typo) == keys.KEY_LEN
    assert typo != key
    assert not keys.is_well_formed(typo)


def test_adjacent_transposition_in_body_is_rejected() -> None:
    for _ in range(20):
        key = keys.generate_api_key()
        i = BODY_START + 10
        if key[i] == key[i + 1]:
            continue
        swapped = key[:i] + key[i + 1] + key[i] + key[i + 2 :]
        assert not keys.is_well_formed(swapped)
        return
    pytest.fail("no key with distinct adjacent characters in 20 tries")


@pytest.mark.parametrize("position", range(6))
def test_wrong_checksum_is_rejected(position: int) -> None:
    key = keys.generate_api_key()
    i = BODY_END + position
    bad = key[:i] + _other_char(key[i]) + key[i + 1 :]
    assert len(bad) == keys.KEY_LEN
    assert not keys.is_well_formed(bad)


def test_checksum_of_another_key_is_rejected() -> None:
    a, b = keys.generate_api_key(), keys.generate_api_key()
    assert a[BODY_END:] != b[BODY_END:]
    assert not keys.is_well_formed(a[:BODY_END] + b[BODY_END:])


@pytest.mark.parametrize("prefix", ["fgx_", "FGK_", "sk__", "fgk-", "gk_f"])
def test_wrong_prefix_is_rejected(prefix: str) -> None:
    key = keys.generate_api_key()
    bad = prefix + key[len("fgk_") :]
    assert len(bad) == keys.KEY_LEN
    assert not keys.is_well_formed(bad)


def test_wrong_length_is_rejected() -> None:
    key = keys.generate_api_key()
    assert not keys.is_well_formed(key[:-1])
    assert not keys.is_well_formed(key + "0")
    assert not keys.is_well_formed(key + key)
    assert not keys.is_well_formed("fgk_")
    assert not keys.is_well_formed("")
    assert not keys.is_well_formed(" " + key)
    assert not keys.is_well_formed(key + "\n")


def test_non_base62_character_in_body_is_rejected() -> None:
    key = keys.generate_api_key()
    for c in "-_+/= .":
        bad = key[:BODY_START] + c + key[BODY_START + 1 :]
        assert not keys.is_well_formed(bad)


def test_non_ascii_in_body_is_rejected() -> None:
    key = keys.generate_api_key()
    for c in ["é", "\uff21", "ß", "\u0000", "😀"]:
        bad = key[:BODY_START] + c + key[BODY_START + 1 :]
        assert len(bad) == keys.KEY_LEN
        assert not keys.is_well_formed(bad)


@pytest.mark.parametrize("char", ["é", "\uff21", "😀", "ÿ"])
def test_non_ascii_in_checksum_is_rejected(char: str) -> None:
    """A key is client input (Starlette decodes headers as latin-1): a non-ASCII character
    in the checksum must be refused like any other malformed key, not crash the check."""
    key = keys.generate_api_key()
    bad = key[:-1] + char
    assert len(bad) == keys.KEY_LEN
    assert keys.is_well_formed(bad) is False


def test_non_ascii_in_prefix_is_rejected() -> None:
    key = keys.generate_api_key()
    assert not keys.is_well_formed("fgké" + key[4:])


def test_hash_is_deterministic() -> None:
    key = keys.generate_api_key()
    pepper = b"pepper-one"
    assert keys.hash_api_key(key, pepper) == keys.hash_api_key(key, pepper)


def test_hash_depends_on_the_pepper() -> None:
    key = keys.generate_api_key()
    assert keys.hash_api_key(key, b"pepper-one") != keys.hash_api_key(key, b"pepper-two")
    assert keys.hash_api_key(key, b"") != keys.hash_api_key(key, b"x")


def test_hash_depends_on_the_key() -> None:
    a, b = keys.generate_api_key(), keys.generate_api_key()
    assert keys.hash_api_key(a, b"p") != keys.hash_api_key(b, b"p")


def test_hash_is_not_the_key() -> None:
    key = keys.generate_api_key()
    digest = keys.hash_api_key(key, b"pepper")
    assert digest != key
    assert key not in digest
    assert key[BODY_START:BODY_END] not in digest
    # hex HMAC-SHA256, fits the key_hash column (max 128)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)


def test_hash_is_peppered_not_plain_sha256() -> None:
    import hashlib

    key = keys.generate_api_key()
    assert keys.hash_api_key(key, b"pepper") != hashlib.sha256(key.encode()).hexdigest()


def test_display_prefix() -> None:
    key = keys.generate_api_key()
    shown = keys.display_prefix(key)
    assert shown == key[: len("fgk_") + 8]
    assert len(shown) == keys.DISPLAY_LEN == 12
    assert shown.startswith("fgk_")
    assert key.startswith(shown)
    # far too short to be a usable key, and it reveals none of the checksum
    assert not keys.is_well_formed(shown)
    assert len(shown) <= 32  # fits api_keys.prefix


@pytest.mark.parametrize("_", range(20))
def test_webhook_secret_format(_: int) -> None:
    secret = keys.generate_webhook_secret()
    assert secret.startswith("whsec_")
    payload = secret[len("whsec_") :]
    raw = base64.b64decode(payload, validate=True)
    assert len(raw) == 24
    assert base64.b64encode(raw).decode() == payload
    assert len(payload) == 32  # 24 bytes -> 32 base64 characters, no padding
    assert len(secret) <= 128  # fits accounts.webhook_secret


def test_webhook_secrets_are_unique() -> None:
    secrets_ = {keys.generate_webhook_secret() for _ in range(500)}
    assert len(secrets_) == 500
