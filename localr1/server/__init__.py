"""``localr1 serve``: the OpenAI- and Ollama-compatible HTTP server.

``protocol`` checks request bodies (no web framework), ``service`` runs generations on the engine for the
routes of both APIs (admission, stop strings), ``exchange`` is one request's life (body, first event,
errors), ``openai`` and ``ollama`` render events in each API's shape, ``guards`` hold the middleware (log,
origin and host, key), ``app`` wires routes and guards into a Starlette application, ``connections`` bounds
what a client may cost before its request is whole, and ``run`` serves it with uvicorn. Starlette and
uvicorn are imported only here.
"""
