"""The persist step's storage: the sink adapters behind :class:`canaryws.core.sink.Sink`.

- :mod:`.url`: ``CANARYWS_SINK`` parsed (:func:`~.url.parse_sink`) and the adapter it names
  (:func:`~.url.open_sink`); :mod:`.redaction` keeps a URL's password out of every message;
- :mod:`.sqlite` (:class:`~.sqlite.SqliteSink`, the embedded default) and :mod:`.postgres`
  (:class:`~.postgres.PostgresSink`): one transaction per group, exactly once per
  ``(client_id, batch_id)``;
- :mod:`.migrations`: the versioned schema, migrated up at the service's start and up or down
  by ``canaryws sink migrate``;
- :mod:`.committer`: the group commit of the batch loops' handoffs; :mod:`.counts`: what the
  sink committed, for ``canaryws report``.

docs/sink.md describes the configuration, the schema and the operations.
"""

from canaryws.adapters.sink.migrations import SchemaTooNew
from canaryws.adapters.sink.redaction import redacted
from canaryws.adapters.sink.url import open_sink, parse_sink

__all__ = ["SchemaTooNew", "open_sink", "parse_sink", "redacted"]
