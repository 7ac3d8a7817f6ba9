"""Standard Webhooks signing of request bodies.

Each request carries ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers.

The signature is ``v1,`` followed by the base64 HMAC-SHA256 of
``{webhook-id}.{webhook-timestamp}.{body}``, computed by the ``standardwebhooks``
library, so a receiver verifies a request with
``standardwebhooks.Webhook(secret).verify(body, headers)``. The secret is the
library's format: ``whsec_`` followed by the base64 of the key. Standard
Webhooks 1.0.0 specifies a random key of at least 24 bytes.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import math

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
_GENERATE_HINT = (
    'generate one with: python -c "import base64, secrets; '
    "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\""
)


def decode_secret(secret: str | bytes) -> bytes:
    """Return the key of a webhook secret given as ``whsec_<base64>``, plain base64, or bytes.

    Error messages describe the secret's shape and never its content.

    Raises:
        ValueError: when the secret is not a string or bytes, is not valid base64, or
            its key is shorter than ``MIN_SECRET_BYTES``.
    """
    if isinstance(secret, bytes):
        key = secret
    elif isinstance(secret, str):
        text = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
        try:
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                f"invalid webhook secret: expected {SECRET_PREFIX!r} followed by base64, got "
                f"{len(secret)} characters that are not valid base64; {_GENERATE_HINT}"
            ) from None
    else:
        raise ValueError(
            f"invalid webhook secret: expected a string such as 'whsec_...' or bytes, got "
            f"{type(secret).__name__}; {_GENERATE_HINT}"
        )
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(
            f"invalid webhook secret: its key is {len(key)} bytes, and Standard Webhooks specifies "
            f"for at least {MIN_SECRET_BYTES}; {_GENERATE_HINT}"
        )
    return key


class WebhookSigner:
    """Signs request bodies with one secret. Its ``repr`` hides the secret.

    Raises:
        ValueError: when the secret is invalid, as ``decode_secret`` describes.
    """

    def __init__(self, secret: str | bytes) -> None:
        self._webhook = Webhook(decode_secret(secret))

    def headers(self, webhook_id: str, timestamp: datetime.datetime, body: bytes) -> dict[str, str]:
        """Return the three Standard Webhooks headers for one delivery attempt."""
        return {
            "webhook-id": webhook_id,
            # The library signs the timestamp rounded down to whole seconds, as here.
            "webhook-timestamp": str(math.floor(timestamp.timestamp())),
            "webhook-signature": self._webhook.sign(webhook_id, timestamp, body),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(secret=<hidden>)"
