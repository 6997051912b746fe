"""uvicorn as canaryws runs it: :mod:`.door` (what its HTTP protocol lets in),
:mod:`.graceful` (the server with a bounded graceful shutdown), :mod:`.config` (the uvicorn
configuration, every worker alike), :mod:`.supervisor` (N worker processes: it accepts every
connection and hands it to the worker holding the fewest) and :mod:`.handoff` (a worker's side
of that)."""
