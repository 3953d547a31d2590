"""Builds the configured providers. Adapters are imported only when configured, so a gateway
without the local model never loads llama.cpp."""

from __future__ import annotations

from switchboard.core.config import ProviderConfig, Settings
from switchboard.providers.base import Provider

# Kinds served by the OpenAI Chat Completions adapter in this release.
OPENAI_STYLE = {"openai-compatible", "openai", "xai", "qwen"}


def build_providers(settings: Settings, configs: list[ProviderConfig] | None = None) -> dict[str, Provider]:
    """One adapter per provider entry (`configs`, default: the settings' own), plus the local model."""
    providers: dict[str, Provider] = {}
    if settings.local_model.enabled:
        from switchboard.providers.local_model import LocalModelProvider

        providers["local"] = LocalModelProvider(settings.local_model, settings.data_dir / "models")
    for config in settings.providers if configs is None else configs:
        if config.kind in OPENAI_STYLE:
            from switchboard.providers.openai_compat import OpenAICompatProvider

            providers[config.name] = OpenAICompatProvider(config)
        elif config.kind == "anthropic":
            from switchboard.providers.anthropic import AnthropicProvider

            providers[config.name] = AnthropicProvider(config)
        elif config.kind == "gemini":
            from switchboard.providers.gemini import GeminiProvider

            providers[config.name] = GeminiProvider(config)
        else:
            raise ValueError(
                f"provider {config.name!r}: kind {config.kind!r} has no adapter in this release "
                f"(available: local, {', '.join(sorted(OPENAI_STYLE))})"
            )
    return providers
