"""Canned S3 error responses injected into a boto3 client, for retry and counting tests.

The injector hooks botocore's ``before-send`` event, the same event
:class:`wsfs.store.s3.S3Store` counts requests on.  botocore calls every
``before-send`` handler and sends nothing if one returns a response, so an
injected failure is still one counted attempt, then botocore's retry logic
sees the canned status exactly as if a server had sent it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from botocore.awsrequest import AWSResponse


class _Raw:
    """Just enough of a urllib3 response for AWSResponse.content."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_kwargs: Any) -> Iterator[bytes]:
        yield self._body


class FaultInjector:
    """Answers the next attempts of one S3 operation with the given (status, code) errors."""

    def __init__(self, client: Any, operation: str, faults: list[tuple[int, str]]) -> None:
        self._lock = threading.Lock()
        self._faults = list(faults)
        self.injected = 0
        self._client = client
        self._event = f"before-send.s3.{operation}"
        self._id = f"wsfs-test-faults-{id(self)}"
        # Registered last, so the store's counting handler has already run.
        client.meta.events.register(self._event, self._handler, unique_id=self._id)

    def _handler(self, request: Any, **_kwargs: Any) -> AWSResponse | None:
        with self._lock:
            if not self._faults:
                return None
            status, code = self._faults.pop(0)
            self.injected += 1
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected by the test</Message></Error>"
        ).encode()
        headers = {"Content-Type": "application/xml", "Content-Length": str(len(body))}
        return AWSResponse(request.url, status, headers, _Raw(body))

    def remove(self) -> None:
        self._client.meta.events.unregister(self._event, unique_id=self._id)

    def __enter__(self) -> FaultInjector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
