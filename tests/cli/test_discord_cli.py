"""`switchboard channels discord register-commands` and Discord in `channels status`, as an
operator runs them, against the fake Discord."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fakes.discord_api import FakeDiscord


def _cli(tmp_path: Path, *args: str, config: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    toml = tmp_path / "switchboard.toml"
    toml.write_text(config)
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8", "SWITCHBOARD_CONFIG": str(toml),
            "SWITCHBOARD_DATA_DIR": str(tmp_path / "data"), "SWITCHBOARD_LOCAL_MODEL__ENABLED": "false"}
    if "PYTHONPATH" in os.environ:
        base["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run([sys.executable, "-m", "switchboard.cli.main", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=120)


def _config(fake: FakeDiscord) -> str:
    return (f'[channels.discord]\npublic_key = "{fake.public_key}"\napplication_id = "{fake.application_id}"\n'
            f'api_base_url = "{fake.api_url}"\n')


def test_register_commands_puts_ask_and_link_in_place(tmp_path: Path) -> None:
    with FakeDiscord() as fake:
        done = _cli(tmp_path, "channels", "discord", "register-commands", config=_config(fake),
                    env={"DISCORD_BOT_TOKEN": fake.token})
        assert done.returncode == 0, done.stderr
        assert "Registered /ask, /link" in done.stdout
        names = {c["name"]: c for c in fake.commands["global"]}
        assert set(names) == {"ask", "link"}
        assert names["ask"]["options"][0] == {"type": 3, "name": "text", "description": "What to ask", "required": True,
                                              "max_length": 4000}
        assert names["link"]["options"][0]["name"] == "code"
        guild = _cli(tmp_path, "channels", "discord", "register-commands", "--guild", "42", config=_config(fake),
                     env={"DISCORD_BOT_TOKEN": fake.token})
        assert guild.returncode == 0 and "in server 42" in guild.stdout and set(fake.commands) == {"global", "42"}
        refused = _cli(tmp_path, "channels", "discord", "register-commands", config=_config(fake),
                       env={"DISCORD_BOT_TOKEN": "not-the-token"})
        assert refused.returncode == 1 and "Discord refused the commands: HTTP 401" in refused.stderr
        missing = _cli(tmp_path, "channels", "discord", "register-commands", config=_config(fake))
        assert missing.returncode == 1 and "DISCORD_BOT_TOKEN" in missing.stderr
    unconfigured = _cli(tmp_path, "channels", "discord", "register-commands", config="")
    assert unconfigured.returncode == 1 and "[channels.discord]" in unconfigured.stderr


def test_status_shows_discord_on_or_off_and_why(tmp_path: Path) -> None:
    with FakeDiscord() as fake:
        assert _cli(tmp_path, "db", "upgrade", config="").returncode == 0
        off = _cli(tmp_path, "channels", "status", config=_config(fake))
        assert off.returncode == 0, off.stderr
        assert "discord: off: Discord needs public_key, application_id and DISCORD_BOT_TOKEN" in off.stdout
        on = _cli(tmp_path, "channels", "status", config=_config(fake), env={"DISCORD_BOT_TOKEN": fake.token})
        assert "discord: on" in on.stdout
        bad_key = _config(fake).replace(fake.public_key, "not-hex")
        wrong = _cli(tmp_path, "channels", "status", config=bad_key, env={"DISCORD_BOT_TOKEN": fake.token})
        assert "discord: off: Discord's public_key must be the application's public key" in wrong.stdout
