"""`switchboard channels ...` as an operator runs it: a link code (only the code on its last
line), each channel's state and last error, and Telegram's webhook registered with the secret."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from switchboard.channels.linking import ALPHABET, CODE_LENGTH
from switchboard.store.channels_schema import channel_link_codes, channel_state
from switchboard.store.db import make_engine, reading
from tests.fakes.telegram_api import FakeTelegram

SECRET = "cli_webhook-secret"


def run(tmp_path: Path, *args: str, config: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    toml = tmp_path / "switchboard.toml"
    toml.write_text(config)
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8", "SWITCHBOARD_CONFIG": str(toml),
            "SWITCHBOARD_DATA_DIR": str(tmp_path / "data"), "SWITCHBOARD_LOCAL_MODEL__ENABLED": "false"}
    return subprocess.run([sys.executable, "-m", "switchboard.cli.main", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=120)


def _ready(tmp_path: Path) -> None:
    assert run(tmp_path, "db", "upgrade").returncode == 0
    assert run(tmp_path, "users", "create", "ada@example.com").returncode == 0


def test_link_code_prints_only_the_code_on_its_last_line_and_stores_its_hash(tmp_path: Path) -> None:
    _ready(tmp_path)
    done = run(tmp_path, "channels", "link-code", "ada@example.com")
    assert done.returncode == 0, done.stderr
    code = done.stdout.splitlines()[-1]
    assert len(code) == CODE_LENGTH and set(code) <= set(ALPHABET)
    assert f"/start {code}" in done.stderr and f"LINK {code}" in done.stderr and "15 minutes" in done.stderr
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'switchboard.db'}")
    with reading(engine) as conn:
        hashes = conn.execute(select(channel_link_codes.c.code_hash)).scalars().all()
    assert hashes == [hashlib.sha256(code.encode()).hexdigest()]
    engine.dispose()
    unknown = run(tmp_path, "channels", "link-code", "nobody@example.com")
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1 and "nobody@example.com" in unknown.stderr


def test_status_says_what_is_off_and_why_and_the_last_error(tmp_path: Path) -> None:
    _ready(tmp_path)
    off = run(tmp_path, "channels", "status")
    assert off.returncode == 0, off.stderr
    assert "telegram: off: no [channels.telegram] section" in off.stdout
    with FakeTelegram() as tg:
        config = f'[channels.telegram]\napi_base_url = "{tg.url}"\n\n[channels.whatsapp]\nphone_number_id = "1065"\n'
        missing = run(tmp_path, "channels", "status", config=config)
        assert "telegram: off: Telegram needs TELEGRAM_BOT_TOKEN and TELEGRAM_WEBHOOK_SECRET" in missing.stdout
        engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'switchboard.db'}")
        with engine.begin() as conn:
            conn.execute(channel_state.insert().values(channel="telegram", detail="@SwitchboardTestBot", updated_ms=1,
                                                       last_error="a reply was not delivered: Forbidden: bot was "
                                                                  "blocked by the user (refused)",
                                                       last_error_ms=1_700_000_000_000))
        engine.dispose()
        env = {"TELEGRAM_BOT_TOKEN": tg.token, "TELEGRAM_WEBHOOK_SECRET": SECRET}
        on = run(tmp_path, "channels", "status", "--json", config=config, env=env)
        assert on.returncode == 0, on.stderr
        telegram, whatsapp, discord = json.loads(on.stdout)
        assert discord["state"] == "off: no [channels.discord] section in the configuration"
        assert telegram["state"] == "on" and telegram["detail"] == "@SwitchboardTestBot"
        assert "blocked by the user" in telegram["last_error"] and telegram["webhook"].startswith("not set")
        assert whatsapp["state"].startswith("off: WhatsApp needs")
        shown = run(tmp_path, "channels", "status", config=config, env=env)
        assert "telegram: on (@SwitchboardTestBot)" in shown.stdout and "blocked by the user" in shown.stdout
        # The bot's name gives link-code the deep link.
        code = run(tmp_path, "channels", "link-code", "ada@example.com", config=config, env=env)
        assert re.search(r"https://t\.me/SwitchboardTestBot\?start=\w{10}", code.stderr)


def test_set_webhook_registers_the_url_with_the_secret(tmp_path: Path) -> None:
    with FakeTelegram() as tg:
        config = f'[channels.telegram]\napi_base_url = "{tg.url}"\n'
        env = {"TELEGRAM_BOT_TOKEN": tg.token, "TELEGRAM_WEBHOOK_SECRET": SECRET}
        url = "https://switchboard.example.com/channels/telegram/webhook"
        done = run(tmp_path, "channels", "telegram", "set-webhook", url, config=config, env=env)
        assert done.returncode == 0, done.stderr
        assert tg.webhook == {"url": url, "secret_token": SECRET, "allowed_updates": ["message"]}
        refused = run(tmp_path, "channels", "telegram", "set-webhook", url, config=config,
                      env={**env, "TELEGRAM_WEBHOOK_SECRET": "spaces are not allowed"})
        assert refused.returncode == 1 and "secret token contains unallowed characters" in refused.stderr
        unconfigured = run(tmp_path, "channels", "telegram", "set-webhook", url, env=env)
        assert unconfigured.returncode == 1 and "[channels.telegram]" in unconfigured.stderr
