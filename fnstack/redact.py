"""Keep secrets out of what the server shows and logs.

Two tools, one rule each:

- ``scrub_url(url)`` masks the credentials a URL can carry: the ``user:pass@`` part and
  the values of query parameters named like secrets (``?api-key=``, ``?key=``,
  ``token=``, ``sig=``...). Use it on every URL that goes into an error message, a log
  line or an admin answer. It never raises: a string that is not a URL comes back with
  the same masking applied where it can tell.
- ``redact(value)`` walks a config (dicts, lists) and masks by *type of field*: values
  under key/secret/token/password/credential-named keys, every value of a ``headers``
  mapping (``Authorization``, ``Cookie``, ``x-api-key`` and whatever else a user put
  there: a header is where credentials travel), and credentials inside URL strings.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "is_secret_name", "redact", "scrub_text", "scrub_url"]

MASK = "********"

# A field or query parameter holds a secret when one of its words is one of these
# ("aws_secret_access_key", "x-api-key", "accessToken"), or its name ends in one
# ("apikey"). By words, not substrings: "tokenizer_path" and "max_tokens" are not secrets.
_SECRET_WORDS = frozenset({
    "key", "apikey", "secret", "token", "password", "passwd", "pwd", "passphrase",
    "credential", "credentials", "auth", "authorization", "cookie", "signature", "sig",
    "jwt", "bearer", "code",
})
_SECRET_SUFFIXES = ("key", "token", "secret", "password")
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# Mapping keys whose *values* are all secret-bearing, whatever their own names.
_HEADER_MAPS = ("headers", "default_headers", "extra_headers", "http_headers")

# scheme://user[:pass]@host inside free text (log lines, error messages).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@?#]+)@")
# name=value inside a query string in free text.
_QUERY_PARAM = re.compile(r"(?P<sep>[?&;])(?P<name>[^=&;#\s]+)=(?P<value>[^&;#\s]*)")


def is_secret_name(name: str) -> bool:
    words = [w.lower() for w in _WORD.findall(name)]
    return any(w in _SECRET_WORDS for w in words) or name.lower().endswith(_SECRET_SUFFIXES)


def scrub_url(url: str) -> str:
    """``url`` with its userinfo and secret query values replaced by ``********``.

    >>> scrub_url("https://bob:pw@api.example.com/v1?api-key=abc&x=1")
    'https://********@api.example.com/v1?api-key=********&x=1'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub_text(url)
    if not parts.scheme or not parts.netloc:
        return scrub_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_name(k) for k, _ in pairs):
            query = urlencode(
                [(k, MASK if is_secret_name(k) and v else v) for k, v in pairs], safe="*"
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub_text(text: str) -> str:
    """Mask URL credentials wherever they appear inside free text (messages, logs)."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)

    def param(m: re.Match[str]) -> str:
        if is_secret_name(m.group("name")) and m.group("value"):
            return f"{m.group('sep')}{m.group('name')}={MASK}"
        return m.group(0)

    return _QUERY_PARAM.sub(param, text)


def redact(value: Any, key: str = "") -> Any:
    """A copy of a config value with every secret masked (see the module docstring)."""
    if isinstance(value, dict):
        if key.lower() in _HEADER_MAPS:
            return {k: _mask_header(v) for k, v in value.items()}
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, key) for v in value]
    if value and key and is_secret_name(key) and not isinstance(value, bool | int | float):
        return MASK
    if isinstance(value, str) and ("://" in value or "=" in value):
        return scrub_text(value) if "://" not in value else _scrub_any_url(value)
    return value


def _mask_header(value: Any) -> Any:
    if isinstance(value, dict | list):
        return redact(value, "headers")
    return MASK if value not in (None, "") else value


def _scrub_any_url(value: str) -> str:
    stripped = value.strip()
    if " " not in stripped and "://" in stripped:
        return scrub_url(value)
    return scrub_text(value)
