"""Secrets never reach a log line, a message or a process's argv.

At ``-vv`` botocore logs every request it sends: headers with the session
token (``X-Amz-Security-Token``) and the signature (``Authorization:
AWS4-HMAC-SHA256 Credential=..., Signature=...``), canonical requests, and
endpoint URLs, which may carry ``user:password@``.  Daemon logs are files
that outlive the session.  :func:`redact` replaces the values in text;
:class:`RedactingFilter`, installed by :func:`install` on the root logger and
its handlers by the CLI, ``mount.wsfs`` and the mount daemon, applies it to
every record (the message with its arguments, and a formatted traceback)
before any handler writes it.  The CLI and ``mount.wsfs`` pass the messages
of the errors they print through :func:`redact` too.

Besides the patterns, the values of ``$AWS_SECRET_ACCESS_KEY``,
``$AWS_SESSION_TOKEN`` and ``$AWS_SECURITY_TOKEN`` are replaced wherever
they appear.
"""

from __future__ import annotations

import logging
import os
import re

MASK = "***"
_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")

# Each pattern keeps group 1 (the name and separator) and masks what follows.
_PATTERNS = [
    # URL userinfo: scheme://user:password@host -> scheme://user:***@host
    re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@'\"]*:)[^\s/@'\"]+(?=@)"),
    # Header or query values: X-Amz-Security-Token: v, 'X-Amz-Security-Token': b'v', X-Amz-Security-Token=v,
    # and the same for the credential variables' names (aws_session_token = v in a config file or a repr).
    re.compile(
        r"((?:x-amz-security-token|aws_session_token|aws_security_token|aws_secret_access_key|"
        r"secret_access_key|session_token|x-amz-signature|x-amz-credential)"
        r"""['"]?\s*[:=]\s*b?['"]?)[^'"&\s,}>]+""",
        re.IGNORECASE,
    ),
    # Authorization headers: everything up to the end of the quoted value or of the line.
    re.compile(r"""(authorization['"]?\s*[:=]\s*b?['"]?)[^'"\r\n]+""", re.IGNORECASE),
    # SigV4 parts wherever they appear (a header logged another way, a presigned URL).
    re.compile(r"(\b(?:Credential|Signature)=)[^,\s&'\"]+"),
    # botocore's debug line "Signature:\n<hex>".
    re.compile(r"(\bSignature:\s*)[0-9a-f]{16,}"),
]


def _secret_values() -> list[str]:
    return [v for v in (os.environ.get(name, "") for name in _SECRET_VARIABLES) if len(v) >= 8]


def redact(text: str) -> str:
    """*text* with credentials, tokens, signatures and URL passwords replaced by ``***``."""
    for value in _secret_values():
        text = text.replace(value, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


class RedactingFilter(logging.Filter):
    """Redacts each record in place (message with its arguments, traceback); never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_wsfs_redacted", False):
            return True
        record._wsfs_redacted = True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: let the handler report it
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def install() -> None:
    """Put the filter on the root logger and each of its handlers (call again after adding a handler).

    A logger's filters see only records logged on it, not those propagated
    from ``botocore.endpoint`` and the like; a handler's see every record it
    writes.
    """
    root = logging.getLogger()
    for target in (root, *root.handlers):
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)
