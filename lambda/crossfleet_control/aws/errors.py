"""The errors every adapter reports: what boto3 raises, and the sink a read reports them to.

Each read returns None for what it could not read (the policy treats None as unknown, never zero) and records
the error; each write raises, and the caller decides what a failure means.
"""

from __future__ import annotations

from typing import Protocol

from botocore.exceptions import BotoCoreError, ClientError

AwsError = (BotoCoreError, ClientError)


class ErrorSink(Protocol):
    def __call__(self, where: str, error: Exception) -> None: ...
