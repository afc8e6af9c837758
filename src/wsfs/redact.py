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

A process's argv is readable by every local user (``ps``, ``/proc/PID/cmdline``)
and a mount daemon, a fork of the command, shows it for its whole life.
``mount.wsfs`` keeps its options out of argv (it re-executes itself with them
in a pipe); for a secret typed on the ``wsfs`` command line
(``--endpoint-url http://user:password@host``), :func:`scrub_argv`
overwrites it with ``*`` in the process's own argv memory, at the start of
every command, before a daemon is forked.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable

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
    return [v for v in (os.environ.get(name, "") for name in _SECRET_VARIABLES) if len(v) >= 6]


def redact(text: str) -> str:
    """*text* with credentials, tokens, signatures and URL passwords replaced by ``***``."""
    return _redact(text, lambda secret: MASK)


def _redact(text: str, mask: Callable[[str], str]) -> str:
    for value in _secret_values():
        text = text.replace(value, mask(value))
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + mask(m.group(0)[len(m.group(1)) :]), text)
    return text


def scrub_argv() -> bool:
    """Overwrite secrets in this process's argv memory with ``*`` (same length); True if there were any.

    Python keeps its own copy of the arguments (``sys.argv``), so only what
    ``/proc/self/cmdline`` shows changes.  The argv area is found from
    ``/proc/self/stat`` (fields 48-49) and written through ``/proc/self/mem``;
    where that is not possible, nothing happens.
    """
    try:
        with open("/proc/self/cmdline", "rb") as f:
            cmdline = f.read()
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # fields from the 3rd (state) on
        arg_start, arg_end = int(fields[45]), int(fields[46])
    except (OSError, IndexError, ValueError):
        return False
    stars = [_redact(a.decode("utf-8", "surrogateescape"), lambda s: "*" * len(s)) for a in cmdline.split(b"\0")]
    masked = b"\0".join(a.encode("utf-8", "surrogateescape") for a in stars)
    if masked == cmdline or len(masked) != len(cmdline) or len(masked) > arg_end - arg_start:
        return False
    try:
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(arg_start)
            mem.write(masked)
    except OSError:
        return False
    return True


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
