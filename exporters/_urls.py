"""URL helpers shared by the exporters."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_REDACTED = "***"
_SECRET_QUERY_KEYS = frozenset({"password", "token", "access_token", "secret"})


def redact_url(url: str) -> str:
    """Return ``url`` with the password of its user info and secret query values replaced.

    The username, host, port, path and other query parameters are kept, so the
    result still identifies the server in a log line.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
        hostname = parts.hostname
        port = parts.port
    except ValueError:
        # An unparsable URL may hold a secret anywhere, so none of it is shown.
        return "<invalid URL>"

    netloc = parts.netloc
    if password is not None:
        user = parts.username or ""
        host = hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if port is not None:
            host = f"{host}:{port}"
        netloc = f"{user}:{_REDACTED}@{host}"

    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key.lower() in _SECRET_QUERY_KEYS for key, _ in pairs):
            redacted = [
                (key, _REDACTED if key.lower() in _SECRET_QUERY_KEYS else value)
                for key, value in pairs
            ]
            query = urlencode(redacted, safe="*")

    if not url.startswith(f"{parts.scheme}://"):
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    # urlunsplit drops the empty authority of "unix:///path", so the URL is rebuilt by hand.
    text = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        text += f"?{query}"
    if parts.fragment:
        text += f"#{parts.fragment}"
    return text
