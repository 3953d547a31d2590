"""Images handed to vendors: data: URLs decoded once, the same way for every adapter."""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from dataclasses import dataclass

from switchboard.core.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class InlineImage:
    media_type: str  # lower case; "image/jpg" normalised to "image/jpeg"
    data: str  # base64, whitespace removed


def decode_data_url(url: str) -> InlineImage:
    """`data:[<type>][;base64],<data>` to its media type and base64 payload (400 when broken)."""
    header, comma, payload = url.removeprefix("data:").partition(",")
    if not comma or not payload:
        raise InvalidRequest("an image data: URL has no data after its ','", param="messages")
    fields = [f.strip().lower() for f in header.split(";")]
    media_type = fields[0] or "application/octet-stream"
    if media_type == "image/jpg":
        media_type = "image/jpeg"
    if "base64" in fields[1:]:
        data = "".join(payload.split())
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("an image data: URL is not valid base64", param="messages") from None
    else:  # percent-encoded bytes: vendors want base64
        data = base64.b64encode(urllib.parse.unquote_to_bytes(payload)).decode()
    return InlineImage(media_type, data)
