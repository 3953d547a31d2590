"""Whatever reaches POST /channels/discord/interactions, signed or not, well-formed or not: never a
5xx, every error in OpenAI's shape; and with Discord off the endpoint is a plain 404."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchboard.api.app import create_app
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from tests.api.conftest import gateway_settings
from tests.channels.discord_env import DiscordGateway, discord_gw  # noqa: F401
from tests.support.servers import ServerThread

_ids = st.one_of(st.from_regex(r"\A[0-9]{1,20}\Z"), st.text(max_size=30), st.integers(), st.none(),
                 st.from_regex(r"\A[0-9]{21,80}\Z"))
_values = st.one_of(st.text(max_size=300), st.integers(), st.none(), st.booleans(), st.lists(st.integers(), max_size=3),
                    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
_options = st.one_of(_values, st.lists(st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["text", "code"]), _values), "value": _values}), max_size=3))
_data = st.one_of(_values, st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.sampled_from(["ask", "link", "other", ""]), _values), "options": _options}))
_user = st.one_of(_values, st.fixed_dictionaries({}, optional={"id": _ids, "bot": _values}))
_interaction = st.fixed_dictionaries({}, optional={
    "id": _ids, "application_id": _ids, "type": st.one_of(st.integers(-2, 12), _values),
    "token": st.one_of(st.text(min_size=1, max_size=60), _values, st.just("t" * 3000)), "data": _data,
    "channel_id": _ids, "guild_id": _ids, "user": _user, "member": st.one_of(_values, st.fixed_dictionaries({"user": _user})),
    "channel": st.one_of(_values, st.fixed_dictionaries({"id": _ids})),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(_interaction, _values), raw=st.one_of(st.none(), st.binary(max_size=200)),
       signed=st.booleans())
def test_any_interaction_body_gets_an_answer_never_a_server_error(discord_gw: DiscordGateway, body: object,
                                                                 raw: bytes | None, signed: bool) -> None:
    content = raw if raw is not None else json.dumps(body).encode()  # (any integer, as Discord could send)
    headers = discord_gw.discord.sign(content) if signed else {"content-type": "application/json"}
    response = httpx.post(discord_gw.interactions_url, content=content, headers=headers, timeout=10)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["type"] == "invalid_request_error"
    if not signed:
        assert response.status_code == 401


def test_with_discord_off_the_endpoint_is_404(tmp_path: Path) -> None:
    settings_ = gateway_settings(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", "http://127.0.0.1:9/v1")
    upgrade(make_engine(settings_.resolved_database_url))
    with ServerThread(create_app(settings_)) as server:
        response = httpx.post(server.url + "/channels/discord/interactions", content=b"{}", timeout=10)
    assert response.status_code == 404 and "discord channel is not configured" in response.json()["error"]["message"]
