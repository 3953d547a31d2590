"""The TOML configuration the end-to-end tests give real server processes and the CLI."""

from __future__ import annotations

FAKE_MODEL_TOML = """
[[providers]]
name = "fake"
kind = "openai-compatible"
base_url = "{url}"

[[models]]
name = "fake-small"
provider = "fake"
upstream_name = "fake-model"
context_window = 4096
input_usd_per_mtok = 1000
output_usd_per_mtok = 2000
"""


def fake_model_toml(upstream_url: str, extra: str = "") -> str:
    """One provider ("fake") at `upstream_url` serving "fake-small": 0.2 credits per prompt
    token, 0.4 per completion token."""
    return FAKE_MODEL_TOML.format(url=upstream_url) + extra
