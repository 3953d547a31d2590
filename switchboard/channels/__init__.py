"""Chat channels (Telegram, WhatsApp; Discord next): the assistant where people already talk.

See docs/channels.md. The shared layer (intake, inbox, answer, outbox, delivery, linking,
split, worker) keeps every promise for every platform; an adapter (base.Channel) speaks one
platform's wire format.
"""
