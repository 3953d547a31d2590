"""Token counting (providers.tokenizers, prompt_tokens, image_tokens): offline, exact where the
vendor's tokenizer is public, generous where it is not, cheap for small requests."""

from __future__ import annotations

import base64
import socket
import struct
import time

import pytest
import tiktoken

from switchboard.core.catalog import ModelSpec
from switchboard.core.config import ProviderConfig
from switchboard.core.types import ChatMessage, ChatRequest, ImagePart, ToolCall, ToolSpec
from switchboard.providers import tokenizers
from switchboard.providers.anthropic import AnthropicProvider
from switchboard.providers.gemini import GeminiProvider
from switchboard.providers.image_tokens import anthropic_image_tokens, gemini_image_tokens, image_size, openai_image_tokens
from switchboard.providers.openai_compat import OpenAICompatProvider
from switchboard.providers.prompt_tokens import is_heavy, openai_counter
from switchboard.providers.tokenizers import HEAVY_CHARS, openai_encoding_name, text_tokens


def _spec(name: str = "gpt-4o") -> ModelSpec:
    from decimal import Decimal
    return ModelSpec(name, "p", name, 128_000, Decimal(3), Decimal(15))


def test_encodings_load_from_the_package_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tokenizer tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    enc = tokenizers.encoding.__wrapped__("cl100k_base")  # built afresh, not from the cache
    assert enc.n_vocab == 100_277
    o200k = tokenizers.encoding("o200k_base")
    # Known counts (tiktoken's own README example: "hello world" is 2 tokens).
    assert len(o200k.encode_ordinary("hello world")) == 2
    assert o200k.encode_ordinary("tiktoken is great!") == [83, 8251, 2488, 382, 2212, 0]


def test_openai_models_use_their_own_encoding() -> None:
    assert openai_encoding_name("gpt-4o-mini") == "o200k_base"
    assert openai_encoding_name("gpt-4-turbo") == "cl100k_base"
    assert openai_encoding_name("gpt-3.5-turbo") == "cl100k_base"
    assert openai_encoding_name("gpt-6.2-astra") == "o200k_base"  # newer than tiktoken's table
    assert tiktoken.encoding_name_for_model("gpt-4o") == "o200k_base"


def test_each_vendor_counts_everything_and_the_stand_ins_are_generous() -> None:
    request = ChatRequest("m", [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "What's the weather in Paris?"),
        ChatMessage("assistant", None, tool_calls=[ToolCall("call_1", "weather", '{"city": "Paris"}')]),
        ChatMessage("tool", "sunny", tool_call_id="call_1"),
    ], tools=[ToolSpec("weather", "The weather in a city. " * 20, {"type": "object", "properties": {"city": {"type": "string"}}})],
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}})
    bare = ChatRequest("m", request.messages[:2])
    openai = OpenAICompatProvider(ProviderConfig(name="o", kind="openai"))
    exact = openai.count_prompt(_spec(), request)
    assert exact.bound == exact.estimate
    assert exact.bound > openai.count_prompt(_spec(), bare).bound + 100  # the tool's description is counted
    for provider, factor in ((AnthropicProvider(ProviderConfig(name="a", kind="anthropic")), 1.6),
                             (GeminiProvider(ProviderConfig(name="g", kind="gemini")), 1.35),
                             (OpenAICompatProvider(ProviderConfig(name="v", kind="openai-compatible",
                                                                  base_url="http://127.0.0.1:1/v1")), 1.5)):
        count = provider.count_prompt(_spec("some-model"), request)
        assert count.bound >= count.estimate >= exact.bound - 20  # framing differs a little
        assert count.bound >= factor * (exact.bound - 60)
    anthropic = AnthropicProvider(ProviderConfig(name="a", kind="anthropic"))
    assert anthropic.count_prompt(_spec("claude"), request).bound - anthropic.count_prompt(_spec("claude"), ChatRequest(
        "m", request.messages, response_format=request.response_format)).bound >= 400  # its tool-use system prompt


def test_produced_text_is_counted_and_cut_by_tokens() -> None:
    exact = text_tokens("o200k_base")
    assert exact.estimate("Hello there my friend") == 4
    assert exact.head("Hello there my friend, how are you", 3) == "Hello there my"
    assert exact.head("Hi", 5) == "Hi"
    assert exact.per_byte == 1.0
    stand_in = text_tokens("o200k_base", 1.25, 1.6)
    assert stand_in.estimate("Hello there my friend") == 5 and stand_in.bound("Hello there my friend") == 7
    assert stand_in.per_byte == 1.6
    assert stand_in.estimate(stand_in.head("one two three four five six seven", 5)) <= 5


def _jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def _url(data: bytes, kind: str) -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def test_image_sizes_are_read_from_headers() -> None:
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 640, 480) + b"\x08\x02\x00\x00\x00"
    gif = b"GIF89a" + struct.pack("<HH", 300, 200) + b"\x00" * 8
    webp = b"RIFF" + b"\x00" * 4 + b"WEBPVP8X" + b"\x00" * 8 + (799).to_bytes(3, "little") + (599).to_bytes(3, "little")
    assert image_size(_url(png, "png")) == (640, 480)
    assert image_size(_url(_jpeg(1920, 1080), "jpeg")) == (1920, 1080)
    assert image_size(_url(gif, "gif")) == (300, 200)
    assert image_size(_url(webp, "webp")) == (800, 600)
    assert image_size("https://example.com/cat.jpg") is None
    assert image_size("data:image/png;base64,iVBORw0KGgo=") is None  # truncated


def test_image_rules_and_their_maximum_when_the_size_is_unknown() -> None:
    big = ImagePart(_url(_jpeg(4096, 4096), "jpeg"))
    unknown = ImagePart("https://example.com/cat.jpg")
    assert openai_image_tokens("gpt-4o", big) == 85 + 170 * 4  # 2048 -> 768 x 768: four tiles
    assert openai_image_tokens("gpt-4o", unknown) == 85 + 170 * 8  # the most: 768 x 2048
    assert openai_image_tokens("gpt-4.1-mini", big) == round(1536 * 1.62 + 0.5)
    assert openai_image_tokens("gpt-4o", ImagePart(unknown.url, "low")) == 85
    assert anthropic_image_tokens("claude", ImagePart(_url(_jpeg(1000, 750), "jpeg"))) == 1000
    assert anthropic_image_tokens("claude", unknown) == 4800
    assert gemini_image_tokens("gemini", ImagePart(_url(_jpeg(300, 300), "jpeg"))) == 1120
    assert gemini_image_tokens("gemini", ImagePart(_url(_jpeg(3000, 3000), "jpeg"))) == 4 * 4 * 258


def test_counting_a_small_request_is_cheap_and_large_ones_go_to_a_thread() -> None:
    counter = openai_counter("o200k_base")
    hi = ChatRequest("gpt-4o", [ChatMessage("user", "hi")])
    counter.count("gpt-4o", hi)
    started = time.perf_counter()
    for _ in range(1000):
        is_heavy(hi)
        counter.count("gpt-4o", hi)
    assert (time.perf_counter() - started) / 1000 < 50e-6
    assert not is_heavy(hi)
    assert is_heavy(ChatRequest("m", [ChatMessage("user", "x" * (HEAVY_CHARS + 1))]))
    assert is_heavy(ChatRequest("m", [ChatMessage("user", "hi")], tools=[ToolSpec("f", "d" * (HEAVY_CHARS + 1), {})]))


def test_remembered_counts_are_exact_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts are remembered (an assistant turn counts the same history several times) without
    changing any count, and what is remembered stays within its character budget."""
    monkeypatch.setattr(tokenizers, "_MEMO_CHARS", 4000)
    memo = tokenizers._Memo("cl100k_base")
    enc = tokenizers.encoding("cl100k_base")  # the shipped files: tiktoken's own would download them
    texts = [f"message {i}: " + "the quick brown fox jumps over the lazy dog " * (i % 7 + 1) for i in range(200)]
    for _ in range(2):
        for text in texts:
            assert memo.tokens(text) == len(enc.encode_ordinary(text))
    assert 0 < memo._chars <= 4000 and memo._chars == sum(len(t) for t in memo._memo)
    assert memo.tokens("x" * 2000) == len(enc.encode_ordinary("x" * 2000))  # over a quarter: not kept
    assert "x" * 2000 not in memo._memo
