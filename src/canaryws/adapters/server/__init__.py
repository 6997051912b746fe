"""uvicorn as canaryws runs it: :mod:`.door` (what its HTTP protocol lets in),
:mod:`.graceful` (the server with a bounded graceful shutdown), :mod:`.config` (the uvicorn
configuration, every worker alike) and :mod:`.supervisor` (N worker processes on one socket)."""
