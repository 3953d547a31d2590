"""A chat that changes its id: a Telegram group upgraded to a supergroup.

Telegram gives the supergroup a new chat id and deactivates the old group; a message sent to
the old id is refused (400, `parameters.migrate_to_chat_id`). Without this the group's members
would start over in new conversations and the replies still on their way would be lost. So
everything kept under the old id moves, in one transaction:

- the conversations of that chat (every member's: each talks with their own), so the next
  message in the supergroup goes on with the same history, and its reminders go there;
- identities whose chat it was (where to reach someone);
- messages not yet answered, and parts not yet delivered, which then go to the new id (their
  order kept: a chat's rows move together, oldest first as before).

It is learned twice, and doing it again changes nothing: from the service messages Telegram
sends (`migrate_to_chat_id` in the old group, `migrate_from_chat_id` in the new one), and from
a refused send (the part is re-sent to the new id at once, see channels.delivery). A message
still answered under the old id when the move came is moved by its own refused send.
Functions take a Connection and run in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, update

from switchboard.channels.base import chat_key
from switchboard.store.assistant_schema import conversations
from switchboard.store.channels_schema import channel_identities, channel_inbox, channel_outbox

OPEN_INBOX = ("pending", "running")
OPEN_OUTBOX = ("pending", "sending")


@dataclass(frozen=True, slots=True)
class Moved:
    """How many rows now name the new chat."""

    conversations: int = 0
    identities: int = 0
    messages: int = 0
    parts: int = 0

    @property
    def any(self) -> bool:
        return bool(self.conversations or self.identities or self.messages or self.parts)


def move_chat(conn: Connection, channel: str, bot_id: str, old_chat_id: str, new_chat_id: str) -> Moved:
    """Move what is kept under `old_chat_id` to `new_chat_id`. Chat ids are the platform's
    (one group has one id whichever bot is in it), so conversations, which do not name a bot,
    move for every bot; queued rows move for this bot."""
    if old_chat_id == new_chat_id:
        return Moved()
    new_key = chat_key(channel, bot_id, new_chat_id)
    convs = conn.execute(update(conversations)
                         .where(conversations.c.channel == channel, conversations.c.external_chat_id == old_chat_id)
                         .values(external_chat_id=new_chat_id)).rowcount
    idents = conn.execute(update(channel_identities)
                          .where(channel_identities.c.channel == channel, channel_identities.c.chat_id == old_chat_id)
                          .values(chat_id=new_chat_id)).rowcount
    waiting = conn.execute(update(channel_inbox)
                           .where(channel_inbox.c.channel == channel, channel_inbox.c.bot_id == bot_id,
                                  channel_inbox.c.chat_id == old_chat_id, channel_inbox.c.status.in_(OPEN_INBOX))
                           .values(chat_id=new_chat_id, chat_key=new_key)).rowcount
    # A part keeps its chat_id (its text is bound to it); its chat_key, which orders the chat
    # and names where it goes (outbox.load), moves.
    parts = conn.execute(update(channel_outbox)
                         .where(channel_outbox.c.channel == channel, channel_outbox.c.bot_id == bot_id,
                                channel_outbox.c.chat_key == chat_key(channel, bot_id, old_chat_id),
                                channel_outbox.c.status.in_(OPEN_OUTBOX))
                         .values(chat_key=new_key)).rowcount
    return Moved(int(convs), int(idents), int(waiting), int(parts))
