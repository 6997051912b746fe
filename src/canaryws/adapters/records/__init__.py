"""The ``/records`` WebSocket endpoint, a thin adapter over the core, one room per idea:

- :mod:`.admission`: the handshake's decision (subprotocol, headers, origin, token,
  revocation) as a plain function, no I/O;
- :mod:`.gate`: the limits a handshake meets first (new handshakes per second, per source
  address and per process; open connections per process), and the refusals' accounting;
- :mod:`.endpoint`: a connection's life (admission, the per-client cap, accept, welcome,
  the batch loop, close) and the sweep that ends connections from outside the loop;
- :mod:`.loop`: the batch loop, frame by frame;
- :mod:`.after_round`: what follows a loop round's answers (count, compare, end spans);
- :mod:`.connection`: the endpoint's state for one open connection, and the close codes;
- :mod:`.flags_view`: the flags as the endpoint reads them.
"""
