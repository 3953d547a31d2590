"""`switchboard assistant EMAIL` driven by scripted lines on stdin, against the scripted fake
upstream: streamed answers, tool calls, each turn's cost, chat commands, the conversation kept
across runs, --new, reminders delivered while the chat is open; and `switchboard reminders list`."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from switchboard.cli.main import app
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI, FakeToolCall
from tests.support.config import fake_model_toml

ALICE = "alice@example.com"


def cheap_model_toml(url: str) -> str:
    """The shared fake model at a hundredth of its price (0.002 credits a prompt token, 0.004 an
    output token), answers of up to 100 tokens: a turn's hold fits the plan's turn limit."""
    return (fake_model_toml(url, "max_output_tokens = 100\n")
            .replace("input_usd_per_mtok = 1000", "input_usd_per_mtok = 10")
            .replace("output_usd_per_mtok = 2000", "output_usd_per_mtok = 20"))


class Chat:
    def __init__(self, fake: FakeOpenAI, env: dict[str, str]) -> None:
        self.fake = fake
        self.env = env

    def run(self, *args: str, input: str | None = None, code: int = 0) -> str:
        result = CliRunner().invoke(app, list(args), input=input, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.stdout

    def chat(self, *lines: str, new: bool = False) -> str:
        return self.run("assistant", ALICE, *(["--new"] if new else []), input="".join(line + "\n" for line in lines))

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json"))

    def model_requests(self) -> list[dict[str, Any]]:
        return [r.json for r in self.fake.requests if r.path.endswith("/chat/completions")]


@pytest.fixture
def chat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Chat]:
    with FakeOpenAI() as fake:
        config = tmp_path / "sb.toml"
        config.write_text(cheap_model_toml(fake.url))
        env = {"SWITCHBOARD_CONFIG": str(config), "SWITCHBOARD_DATA_DIR": str(tmp_path / "data"),
               "SWITCHBOARD_LOCAL_MODEL__ENABLED": "false", "SWITCHBOARD_ASSISTANT__REMINDER_INTERVAL_S": "0.2"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("SWITCHBOARD_MASTER_KEY", raising=False)
        c = Chat(fake, env)
        c.run("db", "upgrade")
        c.run("users", "create", ALICE, "--plan", "plus")
        yield c


def test_a_chat_streams_the_answer_then_its_cost_and_commands_are_free(chat: Chat) -> None:
    chat.fake.behaviour = Behaviour(text="Paris is the capital of France.", chunks=4, prompt_tokens=500,
                                    completion_tokens=50)
    output = chat.chat("What is the capital of France?", "/balance", "/frob", "/quit", "never sent")
    assert "Paris is the capital of France." in output
    # 500 prompt tokens at 0.002 credits and 50 output tokens at 0.004: 1.2 credits, 5998.8 left.
    assert "1.2 credits · 5998.8 left · fake-small" in output
    assert "Available: 5998.8 credits (plus plan)." in output  # /balance, answered without a model
    assert "Unknown command /frob. Type /help" in output
    assert output.count("free · 5998.8 left") == 2
    assert len(chat.model_requests()) == 1  # commands and what followed /quit reached no model
    usage = chat.json("usage", ALICE)
    assert [(u["endpoint"], u["credits_charged"]) for u in usage] == [("assistant", 1.2)]


def test_tool_calls_show_as_they_start_and_finish(chat: Chat) -> None:
    chat.fake.enqueue(
        Behaviour(text="", tool_calls=[FakeToolCall("call_1", "set_reminder",
                                                    json.dumps({"text": "call mum", "when": "in 2 hours"}))]),
        Behaviour(text="Done: I'll remind you to call mum in 2 hours."),
    )
    output = chat.chat("Remind me to call mum in two hours")
    started, finished = output.index("⚙ set_reminder("), output.index("✓ set_reminder: ok")
    assert started < finished < output.index("Done: I'll remind you to call mum in 2 hours.")
    assert "credits · " in output.split("Done:")[1]
    sent = chat.model_requests()[-1]["messages"]
    assert sent[-1]["role"] == "tool" and "call mum" in sent[-1]["content"]
    data = chat.json("reminders", "list", ALICE)["data"]
    assert [(r["text"], r["status"], r["recurrence"]) for r in data] == [("call mum", "active", None)]


def test_the_conversation_continues_across_runs_and_new_starts_another(chat: Chat) -> None:
    chat.fake.behaviour = Behaviour(text="Noted, your cat is called Miso.")
    first = chat.chat("My cat is called Miso.")
    conv = first.split("conversation ")[1].split()[0]
    assert "(new)" in first
    chat.fake.behaviour = Behaviour(text="Your cat is Miso.")
    second = chat.chat("What is my cat called?")
    assert f"conversation {conv} (continued)" in second
    assert "you › My cat is called Miso." in second  # the latest messages, shown on arrival
    history = [m["content"] for m in chat.model_requests()[-1]["messages"] if m["role"] != "system"]
    assert history == ["My cat is called Miso.", "Noted, your cat is called Miso.", "What is my cat called?"]
    third = chat.chat("Hello again", new=True)
    other = third.split("conversation ")[1].split()[0]
    assert other != conv and "(new)" in third
    assert [m["role"] for m in chat.model_requests()[-1]["messages"]] == ["system", "user"]
    # The next run continues the newest: the one --new started.
    assert f"conversation {other} (continued)" in chat.chat("/help")


def test_slash_new_switches_the_chat_to_a_new_conversation(chat: Chat) -> None:
    output = chat.chat("/new", "Fresh start")
    assert "Started a new conversation (conv_" in output
    fresh = output.split("Started a new conversation (")[1].split(")")[0]
    assert [m["role"] for m in chat.model_requests()[-1]["messages"]] == ["system", "user"]
    assert f"conversation {fresh} (continued)" in chat.chat("/balance")


def test_a_turn_that_fails_says_so_and_the_chat_goes_on(chat: Chat) -> None:
    chat.fake.enqueue(Behaviour(status=400, error_message="bad request on purpose", error_type="invalid_request_error"))
    chat.fake.behaviour = Behaviour(text="Back again.")
    output = chat.chat("First", "Second")
    failed, after = output.split("you › Second")
    assert "assistant › Sorry, this turn failed: fake: upstream returned HTTP 400: bad request on purpose" in failed
    assert "free · 6000 left" in failed  # nothing was delivered: nothing charged
    assert "Back again." in after and len(chat.model_requests()) == 2


def test_an_unknown_user_is_a_clean_error(chat: Chat) -> None:
    result = CliRunner().invoke(app, ["assistant", "nobody@example.com"], input="hi\n")
    assert result.exit_code == 1 and "no user with e-mail nobody@example.com" in result.stderr


def test_reminders_list_shows_a_table_and_json(chat: Chat) -> None:
    chat.chat("/timezone Europe/Paris", "/remind tomorrow at 18:00 call mum", "/remind every Monday at 9 standup")
    data = chat.json("reminders", "list", ALICE)["data"]
    assert sorted(r["text"] for r in data) == ["call mum", "standup"]
    standup = next(r for r in data if r["text"] == "standup")
    assert standup["recurrence"] and standup["time_zone"] == "Europe/Paris" and standup["id"].startswith("rem_")
    table = chat.run("reminders", "list", ALICE)
    assert "call mum" in table and "standup" in table and "Europe/Paris" in table and "18:00" in table
    chat.chat(f"/cancel {standup['id']}")
    assert [r["text"] for r in chat.json("reminders", "list", ALICE)["data"]] == ["call mum"]
    every = chat.json("reminders", "list", ALICE, "--all")["data"]
    assert {r["text"]: r["status"] for r in every} == {"call mum": "active", "standup": "cancelled"}
    chat.run("reminders", "list", "nobody@example.com", code=1)


def _reader(stream: Any) -> tuple[queue.Queue[str], threading.Thread]:
    """The stream's lines as they come, on a thread that ends at its end."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in iter(stream.readline, ""):
            lines.put(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return lines, thread


def _wait_for(lines: queue.Queue[str], text: str, timeout: float = 20) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen += lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if text in seen:
            return seen
    raise AssertionError(f"{text!r} not shown; got:\n{seen}")


def test_a_reminder_falls_due_while_the_chat_is_open_and_is_shown_once(chat: Chat) -> None:
    """A real process on a pipe: the reminder arrives while the user has not typed anything."""
    process = subprocess.Popen(
        [sys.executable, "-m", "switchboard.cli.main", "assistant", ALICE], env={**os.environ, **chat.env},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    assert process.stdin is not None and process.stdout is not None
    try:
        lines, pump = _reader(process.stdout)
        process.stdin.write("/remind in 2 seconds stretch\n")
        process.stdin.flush()
        shown = _wait_for(lines, "Reminder rem_1 set")
        shown += _wait_for(lines, "Reminder: stretch")
        process.stdin.write("/reminders\n")
        process.stdin.close()  # Ctrl-D
        assert process.wait(30) == 0
        pump.join(10)
        while not lines.empty():
            shown += lines.get()
    finally:
        if process.poll() is None:
            process.kill()
    assert shown.count("⏰ Reminder: stretch") == 1 and "No reminders are set." in shown.split("you › /reminders")[-1]
    every = chat.json("reminders", "list", ALICE, "--all")["data"]
    assert [(r["text"], r["status"]) for r in every] == [("stretch", "done")]
    assert len(chat.model_requests()) == 0  # no model call, no charge
