"""``localr1 serve``: the OpenAI- and Ollama-compatible HTTP server.

``protocol`` checks request bodies (no web framework), ``stops`` cuts the answer at stop strings,
``service`` runs generations on the engine for the routes of both APIs, ``app`` wires them into a Starlette
application, and ``run`` serves it with uvicorn. Starlette, sse-starlette and uvicorn are imported only here.
"""
