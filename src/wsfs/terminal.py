"""Text that reaches a terminal or a log: control characters escaped.

Names, messages, authors and tags come from the store, which is untrusted:
printed raw, an escape sequence in them could rewrite the user's screen,
forge a log line (a newline) or hide one (a carriage return).  Every
message wsfs prints or logs goes through :func:`escape`; names printed by
``ls``/``diff`` go through :func:`escape_name` when stdout is a terminal
(like ``ls -q``), and stay raw bytes in a pipe so that any name round-trips.
"""

from __future__ import annotations

import logging
import re

# C0 controls (but tab), DEL, C1 controls, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BYTES = re.compile(b"[\x00-\x1f\x7f]")


def _sub(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape(text: str) -> str:
    """*text* with every control character shown as ``\\xNN``: one line, nothing a terminal acts on."""
    return _CONTROL.sub(_sub, text)


def escape_name(name: bytes) -> bytes:
    """A file name for a terminal: control bytes as ``\\xNN`` (invalid UTF-8 stays as it is)."""
    return _CONTROL_BYTES.sub(lambda m: b"\\x%02x" % m.group()[0], name)


class EscapingFormatter(logging.Formatter):
    """A log formatter whose records' messages and tracebacks cannot break lines or carry escape codes.

    The traceback of ``exc_info`` keeps its own newlines (it is ours); the
    message, where names from the store end up, is escaped.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        saved = record.message
        record.message = escape(saved)
        try:
            return super().formatMessage(record)
        finally:
            record.message = saved
