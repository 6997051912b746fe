"""The probe's identities: who it connects as, and the cohort each one was last seen in.

Two sources:

- :class:`IssuedIdentities` (``--data-dir``): the probe signs its own tokens with the service's
  ``secret.key`` for client ids ``<prefix>-<n>`` (``probe-0``, ``probe-1``...), each with the
  signed property ``synthetic=true`` (the service marks such connections synthetic and leaves
  them out of ``canaryws report`` and ``guard``). It holds at most one identity per strategy:
  the search tries ``probe-0``, ``probe-1``... (a client id's cohort follows from the flags, so
  the same ids are found again under the same flags) until each strategy has one, or a bounded
  number of tries says a cohort is empty. It searches again only for a cohort it holds no
  identity in, and only once the flags revision changed (the same flags give the same answer).
- :class:`TokenFileIdentities` (``--token-file``): one token per line (blank lines and ``#``
  comments ignored, at most :data:`MAX_TOKENS`), re-read every round so that rotated tokens are
  used; each token's cohort is learned from its welcome.

Tokens are held only to be sent; they are never logged or shown. An identity is named by its
client id once a welcome gave it, before that by its place (``token-file line 3``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from canaryws.core import summary
from canaryws.core.contract import CohortInfo

MAX_TOKENS = 64
MAX_TOKEN_FILE_BYTES = 256 * 1024
SYNTHETIC_PROPERTY = (summary.SYNTHETIC_PROPERTY, summary.SYNTHETIC_VALUE)  # the service's own rule


class TokenFileError(ValueError):
    """The token file cannot be used (the message names the file and why; never a token)."""


@dataclass(eq=False)
class ProbeIdentity:
    label: str  # the client id, or where the token came from until a welcome names it
    token: Callable[[], str] = field(repr=False)  # a fresh or the configured token; never logged
    cohort: CohortInfo | None = None  # the cohort its last welcome or cohort frame gave
    key: str = ""  # stable identity of the token source (a client id, or a digest of the token)

    @property
    def strategy(self) -> str | None:
        return None if self.cohort is None else self.cohort.strategy


def read_token_file(path: Path) -> list[str]:
    """The tokens of ``path``, one per line; :class:`TokenFileError` when it is unreadable,
    too large, empty, or has more than :data:`MAX_TOKENS`."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise TokenFileError(f"token file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise TokenFileError(f"token file {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise TokenFileError(f"token file {path} is not UTF-8 text") from None
    tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise TokenFileError(f"token file {path} holds no token (one per line)")
    if len(tokens) > MAX_TOKENS:
        raise TokenFileError(f"token file {path} holds {len(tokens)} tokens; the probe uses at most {MAX_TOKENS}")
    return tokens


class TokenFileIdentities:
    """The identities of a token file, with the cohorts learned from their welcomes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known: dict[str, ProbeIdentity] = {}
        self.identities: list[ProbeIdentity] = []
        self.reload()

    def reload(self) -> None:
        """Re-read the file (:class:`TokenFileError` when it cannot be used; the identities
        are then unchanged). A token already known keeps its cohort."""
        tokens = read_token_file(self.path)
        known: dict[str, ProbeIdentity] = {}
        for line, token in enumerate(tokens, start=1):
            key = hashlib.sha256(token.encode()).hexdigest()[:16]
            identity = self._known.get(key) or ProbeIdentity(f"token-file line {line}", _constant(token), key=key)
            known[key] = identity
        self._known = known
        self.identities = list(known.values())


def _constant(token: str) -> Callable[[], str]:
    return lambda: token


class IssuedIdentities:
    """Identities the probe issues itself, at most one per strategy (see the module)."""

    def __init__(self, issue: Callable[[str], str], strategies: tuple[str, ...], prefix: str = "probe",
                 tries: int = 128) -> None:
        self.issue = issue  # client id -> a token signed with the service's secret, synthetic=true
        self.strategies = strategies
        self.prefix = prefix
        self.tries = tries
        self.held: dict[str, ProbeIdentity] = {}  # strategy -> identity
        self.searched_revision: str | None = None  # the flags revision of the last full search
        self.searched = False

    @property
    def identities(self) -> list[ProbeIdentity]:
        return [self.held[s] for s in self.strategies if s in self.held]

    def missing(self) -> list[str]:
        return [s for s in self.strategies if s not in self.held]

    def needs_search(self, revision: str | None) -> bool:
        """True when a strategy has no identity and the flags may have changed since the last
        search (never searched, or a welcome showed another revision)."""
        return bool(self.missing()) and (not self.searched or revision != self.searched_revision)

    def candidate(self, n: int) -> ProbeIdentity:
        client_id = f"{self.prefix}-{n}"
        return ProbeIdentity(client_id, lambda: self.issue(client_id), key=client_id)

    def is_held(self, key: str) -> bool:
        return any(identity.key == key for identity in self.held.values())

    def offer(self, identity: ProbeIdentity) -> bool:
        """Hold ``identity`` for its cohort's strategy if that has none yet; True when held."""
        strategy = identity.strategy
        if strategy is None or strategy not in self.strategies or strategy in self.held:
            return False
        self.held[strategy] = identity
        return True

    def moved(self, identity: ProbeIdentity, previous: str) -> None:
        """``identity`` was held for ``previous`` and its cohort is now another strategy: it
        leaves that slot, and takes the new one if it is free (else it is dropped)."""
        if self.held.get(previous) is identity:
            del self.held[previous]
        self.offer(identity)
