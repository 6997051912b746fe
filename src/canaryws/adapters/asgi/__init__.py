"""The service's own ASGI wrappers, one per module; :mod:`canaryws.app` stacks them
(outermost first): :mod:`.drain`, :mod:`.expose_abort`, :mod:`.access_token`,
:mod:`.records_route`, then the FastAPI app. :mod:`.scope` names the scope keys they
hand the ``/records`` endpoint."""
