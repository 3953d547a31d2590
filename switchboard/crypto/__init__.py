"""Encryption of user content at rest: AES-256-GCM, envelope style (see docs/security.md).

    keyring = keyring_for(settings, engine)
    blob = keyring.encrypt(Binding(user_id, "table", row_id, "field"), b"...")
    keyring.decrypt(Binding(user_id, "table", row_id, "field"), blob)
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from switchboard.core.config import Settings
from switchboard.crypto.keyring import Binding, KeyRing, master_key_usage
from switchboard.crypto.master import CryptoError, DecryptionFailed, MasterKeys, load_master_keys


def key_file_path(settings: Settings) -> Path:
    return settings.crypto.key_file or settings.data_dir / "master.key"


def master_keys_for(settings: Settings) -> MasterKeys:
    cfg = settings.crypto
    return load_master_keys(master_key_env=cfg.master_key_env, previous_env=cfg.previous_master_keys_env,
                            key_file=key_file_path(settings))


def keyring_for(settings: Settings, engine: Engine) -> KeyRing:
    return KeyRing(engine, master_keys_for(settings), cache_size=settings.crypto.data_key_cache_size)


__all__ = ["Binding", "CryptoError", "DecryptionFailed", "KeyRing", "MasterKeys", "key_file_path", "keyring_for",
           "master_key_usage", "master_keys_for"]
