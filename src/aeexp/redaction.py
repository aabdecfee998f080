"""Credentials are never printed, logged or recorded: :func:`redact` masks them in any text (URIs' passwords and
tokens), and :func:`mask_credentials_in_logs` in every log record. Light (no MLflow), so that a command masks its
lines from its first one."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

MASK = "***"
# scheme://userinfo@ : the userinfo runs to the last "@" before a space or a slash (a password may hold an "@").
# Also as Hydra writes an override's value in a sweep's job overrides, its ":" and "=" escaped: http\://u\:pw@host.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*\\?://)(?P<userinfo>[^\s/]+)@")
_SECRET_QUERY = re.compile(r"(?P<key>[?&](?:password|passwd|pwd|token|access_token|secret|client_secret|api_key"
                           r"|apikey|sig)\\?=)[^&\s#]+", re.IGNORECASE)


def _masked_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match.group("userinfo").partition(":")
    return f"{match.group('scheme')}{user}:{MASK}@" if colon else f"{match.group('scheme')}{MASK}@"


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it masked: ``postgresql://u:secret@host/db`` ->
    ``postgresql://u:***@host/db``, ``https://token@host`` -> ``https://***@host``, ``?password=x`` ->
    ``?password=***``. Every URI aeexp prints, logs or records goes through it."""
    if "@" in text:
        text = _USERINFO.sub(_masked_userinfo, text)
    if "=" in text:
        text = _SECRET_QUERY.sub(lambda match: match.group("key") + MASK, text)
    return text


def _redacting(make_record: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """A log-record factory that masks credentials in each record's message and traceback, whichever logger made
    it and whichever handler (the console, Hydra's ``<job>.log``) writes it."""

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it when the record is written
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    make.aeexp_redacting = True  # type: ignore[attr-defined]
    return make


def mask_credentials_in_logs() -> None:
    """From now on, mask credentials in every log record of this process (see :func:`redact`); done once."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "aeexp_redacting", False):
        logging.setLogRecordFactory(_redacting(factory))

