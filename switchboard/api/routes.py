"""Every endpoint, once: the app adds its routes from this table and the OpenAPI schema
(api.openapi) describes it, so the published schema lists exactly what is served.

The handlers are plain Starlette functions that parse their own input (the hot path stays free
of FastAPI's dependency injection); what they accept is declared here: query parameters are the
very objects that parse them (api.params), bodies the pydantic models they validate against.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from switchboard.api import (account, anthropic_messages, billing, channels, chat, conversations, discord, embeddings,
                             exports, memories)
from switchboard.api.anthropic_schemas import MessagesBody
from switchboard.api.params import ChoiceQuery, IdQuery, IntQuery, MonthQuery, PathId, TextQuery
from switchboard.api.schemas import ChatCompletionBody, CheckoutBody, PlanChangeBody

Auth = Literal["bearer", "bearer or x-api-key", "stripe signature", "telegram secret token", "whatsapp signature",
               "discord signature", "none"]
JSON = ("application/json",)


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Callable[[Request], Awaitable[Response]]
    summary: str
    tag: str
    auth: Auth = "bearer"
    params: tuple[IntQuery | ChoiceQuery | MonthQuery | IdQuery | PathId | TextQuery, ...] = ()
    body: type[BaseModel] | None = None
    any_json_body: bool = False  # a JSON object the handler reads itself (Stripe's events)
    idempotency_key: bool = False
    answers: tuple[str, ...] = JSON  # the media types of a success
    errors: Literal["openai", "anthropic"] = "openai"
    success: int = 200  # the status of a success (201 for a creation)
    body_required: bool = True


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("POST", "/v1/chat/completions", chat.chat_completions,
             "OpenAI's Chat Completions: a chat.completion object, or chat.completion.chunk events with stream: true",
             "inference", body=ChatCompletionBody, idempotency_key=True, answers=("application/json", "text/event-stream")),
    Endpoint("POST", "/v1/messages", anthropic_messages.messages,
             "Anthropic's Messages API: a Message object, or Anthropic's event stream with stream: true",
             "inference", auth="bearer or x-api-key", body=MessagesBody, idempotency_key=True,
             answers=("application/json", "text/event-stream"), errors="anthropic"),
    Endpoint("GET", "/v1/models", account.list_models, "The model catalog with context windows and prices", "account"),
    Endpoint("GET", "/v1/balance", account.balance, "Credits available, held and owed", "account"),
    Endpoint("GET", "/v1/usage", account.usage, "Usage records, newest first, a page at a time", "account",
             params=(account.LIMIT, account.BEFORE)),
    Endpoint("GET", "/v1/usage/summary", account.usage_summary, "Totals per day or per model", "account",
             params=(account.BY, account.DAYS)),
    Endpoint("GET", "/v1/usage/export", exports.usage_export,
             "Every usage record, oldest first, streamed as CSV or JSON (one at a time per user)", "account",
             params=(exports.FORMAT,), answers=("text/csv", "application/json")),
    Endpoint("GET", "/healthz", account.healthz, "200 when the database answers, else 503", "operations", auth="none"),
    Endpoint("POST", "/v1/billing/checkout", billing.checkout, "A Stripe Checkout Session for a plan or a pack", "billing",
             body=CheckoutBody),
    Endpoint("GET", "/v1/billing/subscription", billing.subscription, "The plan in force and the paid subscription", "billing"),
    Endpoint("POST", "/v1/billing/cancel", billing.cancel, "Cancel the subscription at the end of the paid period", "billing"),
    Endpoint("POST", "/v1/billing/plan", billing.change_plan,
             "Upgrade now, downgrade at the period end, or cancel with plan: free", "billing", body=PlanChangeBody),
    Endpoint("GET", "/v1/billing/statement", billing.statement, "A month's opening balance, movements and closing balance",
             "billing", params=(billing.MONTH,)),
    Endpoint("POST", "/v1/conversations", conversations.create_conversation, "Start a conversation with the assistant",
             "assistant", body=conversations.ConversationBody, body_required=False, success=201),
    Endpoint("GET", "/v1/conversations", conversations.list_conversations, "Your conversations, newest first",
             "assistant", params=(conversations.LIMIT, conversations.AFTER_CONVERSATION)),
    Endpoint("GET", "/v1/conversations/{conversation_id}", conversations.get_conversation, "One conversation",
             "assistant", params=(conversations.CONVERSATION,)),
    Endpoint("DELETE", "/v1/conversations/{conversation_id}", conversations.delete_conversation,
             "Delete a conversation, its messages and its reminders, for good", "assistant",
             params=(conversations.CONVERSATION,)),
    Endpoint("GET", "/v1/conversations/{conversation_id}/messages", conversations.list_messages,
             "A conversation's messages, oldest first", "assistant",
             params=(conversations.CONVERSATION, conversations.LIMIT, conversations.AFTER_MESSAGE)),
    Endpoint("POST", "/v1/conversations/{conversation_id}/messages", conversations.send_message,
             "Say something: one turn of the assistant (its reply, or server-sent events with stream: true)",
             "assistant", params=(conversations.CONVERSATION,), body=conversations.MessageBody,
             answers=("application/json", "text/event-stream")),
    Endpoint("GET", "/v1/reminders", conversations.list_reminders, "Your active reminders", "assistant"),
    Endpoint("DELETE", "/v1/reminders/{reminder_id}", conversations.delete_reminder, "Cancel a reminder", "assistant",
             params=(conversations.REMINDER,)),
    Endpoint("POST", "/v1/embeddings", embeddings.embeddings,
             "OpenAI's Embeddings: vectors from the local embedding model, metered and charged", "inference",
             body=embeddings.EmbeddingsBody),
    Endpoint("GET", "/v1/memories/settings", memories.get_settings, "Whether your long-term memory is on", "memory"),
    Endpoint("PATCH", "/v1/memories/settings", memories.patch_settings,
             "Switch your long-term memory on or off (off: nothing new is kept or recalled)", "memory",
             body=memories.SettingsBody),
    Endpoint("POST", "/v1/memories/search", memories.search_memories,
             "Search your memories (keywords and meaning, fused), best first", "memory", body=memories.SearchBody),
    Endpoint("POST", "/v1/memories/import", memories.import_memories,
             "Import a history: each message becomes a memory", "memory", body=memories.ImportBody, success=201),
    Endpoint("GET", "/v1/memories", memories.list_memories, "Your memories with their sources, newest first",
             "memory", params=(memories.LIMIT, memories.AFTER, memories.STATUS)),
    Endpoint("POST", "/v1/memories", memories.create_memory, "Remember a fact", "memory", body=memories.MemoryBody,
             success=201),
    Endpoint("DELETE", "/v1/memories", memories.delete_all_memories, "Forget everything, for good", "memory"),
    Endpoint("GET", "/v1/memories/{memory_id}", memories.get_memory, "One memory", "memory",
             params=(memories.MEMORY,)),
    Endpoint("PATCH", "/v1/memories/{memory_id}", memories.correct_memory,
             "Correct a memory: a new version supersedes it (the old one is kept, marked)", "memory",
             params=(memories.MEMORY,), body=memories.CorrectionBody),
    Endpoint("DELETE", "/v1/memories/{memory_id}", memories.delete_memory,
             "Forget a memory (and the older versions it replaced), for good", "memory", params=(memories.MEMORY,)),
    Endpoint("POST", "/webhooks/stripe", billing.stripe_webhook, "Stripe's events, signed with the webhook secret",
             "billing", auth="stripe signature", any_json_body=True),
    Endpoint("POST", "/channels/telegram/webhook", channels.telegram_webhook,
             "Telegram's updates for the bot (setWebhook with secret_token)", "channels",
             auth="telegram secret token", any_json_body=True),
    Endpoint("GET", "/channels/whatsapp/webhook", channels.whatsapp_verify,
             "WhatsApp's verification handshake: hub.challenge echoed when hub.verify_token matches", "channels",
             auth="none", params=channels.HANDSHAKE, answers=("text/plain",)),
    Endpoint("POST", "/channels/whatsapp/webhook", channels.whatsapp_webhook,
             "WhatsApp Cloud API notifications (messages, statuses), signed with the app secret", "channels",
             auth="whatsapp signature", any_json_body=True),
    Endpoint("POST", "/channels/discord/interactions", discord.discord_interactions,
             "Discord's slash commands (PING, /ask, /link), signed with the application's Ed25519 key", "channels",
             auth="discord signature", any_json_body=True),
)
