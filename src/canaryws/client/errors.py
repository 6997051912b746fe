"""What the client SDK raises. Every exception is a :class:`CanarywsError`; those that
stand for a documented answer of the service carry its documented code
(docs/contract.md, docs/asyncapi.yaml)."""

from __future__ import annotations


class CanarywsError(Exception):
    """Base of everything the SDK raises."""


class BatchError(CanarywsError):
    """The service answered a batch with an ``error`` frame (the connection stays open).

    ``code`` is one of the contract's error codes (``invalid_json``, ``invalid_message``,
    ``unknown_type``, ``too_many_records``, ``duplicate_id``); ``detail`` the service's text."""

    def __init__(self, code: str, detail: str, batch_id: str | None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.batch_id = batch_id


class HandshakeRefused(CanarywsError):
    """The service refused the WebSocket upgrade with an HTTP answer (``status``, and the
    body's ``error`` and ``detail`` when it was the contract's JSON; ``retry_after`` in
    seconds when the answer carried ``Retry-After``)."""

    def __init__(self, status: int, error: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"handshake refused: HTTP {status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.retry_after = retry_after


class ConnectionClosed(CanarywsError):
    """The connection ended with a close ``code`` the SDK does not reconnect after (or
    reconnection is off); batches without an answer get this."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class ContractViolation(CanarywsError):
    """A frame from the service that does not fit the contract: not JSON, not one of its
    messages, or a result that does not answer the batch (an index missing, repeated, out
    of range or out of order; an id that was not asked)."""

    def __init__(self, frame: str, problem: str) -> None:
        super().__init__(f"contract violation: {problem}; frame: {frame[:200]!r}")
        self.frame = frame
        self.problem = problem


class AnswerTimeout(CanarywsError):
    """No answer to a batch within ``answer_timeout``; the batch is forgotten (not resent)."""

    def __init__(self, batch_id: str, timeout: float) -> None:
        super().__init__(f"no answer to batch {batch_id!r} within {timeout:g} s")
        self.batch_id = batch_id
        self.timeout = timeout


class GaveUp(CanarywsError):
    """Reconnection stopped: ``attempts`` handshakes failed in a row, or the policy's time
    ran out; ``last`` is the last failure. The client is closed."""

    def __init__(self, attempts: int, last: BaseException | None) -> None:
        super().__init__(f"gave up after {attempts} attempt(s): {last}")
        self.attempts = attempts
        self.last = last


class ConnectFailed(CanarywsError):
    """The connection could not be opened or the welcome did not arrive (network error,
    timeout, a handshake that is not HTTP); ``cause`` is the underlying error."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"could not connect: {cause!r}")
        self.cause = cause
