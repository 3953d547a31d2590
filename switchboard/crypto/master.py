"""The master key: what wraps every user's data key, and never encrypts user content itself.

It comes from the environment (`SWITCHBOARD_MASTER_KEY`, base64 of 32 bytes) or, for the
zero-configuration default, from a key file under the data directory, created 0600 on first
start. Each master key has an id derived from it (`key_id`), stored beside every data key it
wraps, so that after a rotation the keys still wrapped by an older master key are found and
re-wrapped (`KeyRing.rewrap`) without touching the data they protect.

Key file format (JSON): {"version": 1, "current": "<base64>", "previous": ["<base64>", ...]}.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # AES-GCM's standard nonce, random per encryption
_WRAP_CONTEXT = b"switchboard/data-key/v1"


class CryptoError(Exception):
    """A key is missing or malformed, or a ciphertext failed authentication."""


class DecryptionFailed(CryptoError):
    """A ciphertext did not authenticate: tampered with, or moved to another user, table, row
    or field than the one it was written for."""


def key_id(key: bytes) -> str:
    """A master key's id: 16 hex characters of a hash of it (not enough to learn anything)."""
    return hashlib.sha256(b"switchboard master key id\x00" + key).hexdigest()[:16]


def decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise CryptoError(f"{where} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise CryptoError(f"{where} must be base64 of {KEY_BYTES} bytes (got {len(key)}); "
                          f"make one with: python -c \"import os, base64; print(base64.b64encode(os.urandom(32)).decode())\"")
    return key


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


@dataclass(frozen=True, slots=True)
class MasterKey:
    key: bytes = field(repr=False)

    @property
    def id(self) -> str:
        return key_id(self.key)


def _wrap_aad(user_id: int) -> bytes:
    # A wrapped data key is bound to its user: copied to another user's row, it does not unwrap.
    return _WRAP_CONTEXT + b"\x00" + str(user_id).encode()


class MasterKeys:
    """The current master key (wraps new data keys) and previous ones (still unwrap old ones).

    With a key file, a lookup of an unknown key id, or the wrapping of a new data key, first
    re-reads the file if it changed: a server keeps working while `switchboard crypto
    rotate-master` rotates the file under it."""

    def __init__(self, current: bytes, previous: Iterable[bytes] = (), *, key_file: Path | None = None) -> None:
        self._lock = threading.Lock()
        self.key_file = key_file
        self._stamp = _stamp(key_file)
        self._set(current, previous)

    def _set(self, current: bytes, previous: Iterable[bytes]) -> None:
        self.current = MasterKey(current)
        self._by_id = {k.id: k for k in (MasterKey(p) for p in previous)}
        self._by_id[self.current.id] = self.current

    @property
    def ids(self) -> list[str]:
        return list(self._by_id)

    def refresh(self) -> None:
        """Re-read the key file if it changed since it was read."""
        if self.key_file is None:
            return
        with self._lock:
            stamp = _stamp(self.key_file)
            if stamp != self._stamp:
                current, previous = read_key_file(self.key_file)
                self._set(current, previous)
                self._stamp = stamp

    def get(self, kid: str) -> MasterKey:
        key = self._by_id.get(kid)
        if key is None:
            self.refresh()
            key = self._by_id.get(kid)
        if key is None:
            raise CryptoError(
                f"data key wrapped by master key {kid}, which is not configured (known: {', '.join(self._by_id)}); "
                f"list the old key in SWITCHBOARD_MASTER_KEY_PREVIOUS"
            )
        return key

    def wrap(self, data_key: bytes, user_id: int) -> tuple[str, bytes]:
        """(master key id, nonce + ciphertext) of `data_key` under the current master key."""
        self.refresh()
        master = self.current
        nonce = os.urandom(NONCE_BYTES)
        return master.id, nonce + AESGCM(master.key).encrypt(nonce, data_key, _wrap_aad(user_id))

    def unwrap(self, kid: str, wrapped: bytes, user_id: int) -> bytes:
        master = self.get(kid)
        try:
            return AESGCM(master.key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _wrap_aad(user_id))
        except InvalidTag:
            raise DecryptionFailed(f"the data key of user {user_id} does not unwrap under master key {kid}") from None


def _stamp(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


# -- the key file ---------------------------------------------------------------------------


def read_key_file(path: Path) -> tuple[bytes, list[bytes]]:
    try:
        data = json.loads(path.read_text())
        current = decode_key(data["current"], f"{path}: current")
        previous = [decode_key(k, f"{path}: previous") for k in data.get("previous", [])]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CryptoError(f"cannot read the master key file {path}: {exc}") from None
    return current, previous


def write_key_file(path: Path, current: bytes, previous: Iterable[bytes] = ()) -> None:
    """Replace the key file atomically, readable by its owner only (0600, directory 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = json.dumps({"version": 1, "current": encode_key(current), "previous": [encode_key(k) for k in previous]})
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_key_file(path: Path) -> None:
    """A new key file with a fresh random key, unless one exists (several processes may race
    at first start: exactly one file wins and all of them read it)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"version": 1, "current": encode_key(os.urandom(KEY_BYTES)), "previous": []}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process created the file first
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def rotate_key_file(path: Path) -> MasterKeys:
    """Make a fresh key current in the file; the old ones stay as previous (still unwrapping)."""
    current, previous = read_key_file(path)
    write_key_file(path, os.urandom(KEY_BYTES), [current, *previous])
    return load_key_file(path)


def load_key_file(path: Path) -> MasterKeys:
    if not path.exists():
        create_key_file(path)
    current, previous = read_key_file(path)
    return MasterKeys(current, previous, key_file=path)


def load_master_keys(
    *, env: dict[str, str] | None = None, master_key_env: str = "SWITCHBOARD_MASTER_KEY",
    previous_env: str = "SWITCHBOARD_MASTER_KEY_PREVIOUS", key_file: Path,
) -> MasterKeys:
    """The master keys from the environment when `master_key_env` is set, else from `key_file`
    (created on first use)."""
    env = os.environ if env is None else env  # type: ignore[assignment]
    assert env is not None
    text = env.get(master_key_env, "").strip()
    if text:
        previous = [decode_key(p, previous_env) for p in env.get(previous_env, "").split(",") if p.strip()]
        return MasterKeys(decode_key(text, master_key_env), previous)
    return load_key_file(key_file)
