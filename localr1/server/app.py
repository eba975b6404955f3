"""The Starlette application: the OpenAI routes (server/openai.py) and the Ollama routes (server/ollama.py)
behind the guards (server/guards.py). Every refusal is a JSON error in the caller's API's shape with the
right status; nothing a client sends stops the server."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from localr1.server import ollama, openai
from localr1.server.exchange import error_response
from localr1.server.guards import _AccessLog, _KeyCheck, _SameMachine
from localr1.server.protocol import RequestError
from localr1.server.service import Service
from localr1.server.settings import Settings

# Imported inside the functions that use them: starlette (heavy to import, and not needed by every command).

# What a reasoning model served here cannot do, and what to run instead: a JSON error in the caller's API's
# shape (501), where a bare 404 left a client (or its user) guessing.
_NO_EMBEDDINGS = (
    "localr1 serves a reasoning model, which makes no embeddings: use an embedding model's server for them "
    "(llama-server --embedding, Ollama with an embedding model)"
)
UNSUPPORTED = {
    "/api/embed": _NO_EMBEDDINGS,
    "/api/embeddings": _NO_EMBEDDINGS,
    "/v1/embeddings": _NO_EMBEDDINGS,
    "/api/pull": "models are downloaded on the server's machine: run `localr1 pull NAME` there",
    "/api/push": "localr1 does not upload models",
    "/api/delete": "models are deleted on the server's machine: run `localr1 rm NAME` there",
    "/api/copy": "localr1 serves the one model it was started with: start `localr1 serve` with another",
    "/api/create": "models are made on the server's machine: `localr1 quantize` or `localr1 convert`, then "
    "`localr1 serve FILE.gguf`",
}


def _unsupported(message: str):
    async def endpoint(request: Request) -> Response:
        raise RequestError(message, status=501, code="not_supported")

    return endpoint


ROUTES = [
    Route("/", openai.root, methods=["GET", "HEAD"]),
    Route("/health", openai.health, methods=["GET"]),
    Route("/v1/models", openai.list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", openai.get_model, methods=["GET"]),
    Route("/v1/chat/completions", openai.chat_completions, methods=["POST"]),
    Route("/v1/completions", openai.completions, methods=["POST"]),
    Route("/tokenize", openai.tokenize, methods=["POST"]),
    Route("/api/chat", ollama.api_chat, methods=["POST"]),
    Route("/api/generate", ollama.api_generate, methods=["POST"]),
    Route("/api/tags", ollama.api_tags, methods=["GET"]),
    Route("/api/show", ollama.api_show, methods=["POST"]),
    Route("/api/version", ollama.api_version, methods=["GET"]),
    Route("/api/ps", ollama.api_ps, methods=["GET"]),
    *(Route(path, _unsupported(message), methods=["POST", "DELETE"]) for path, message in UNSUPPORTED.items()),
]


async def on_request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return error_response(request, exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    from starlette.exceptions import HTTPException

    assert isinstance(exc, HTTPException)
    return error_response(request, RequestError(str(exc.detail), status=exc.status_code))


async def on_crash(request: Request, exc: Exception) -> Response:
    return error_response(request, RequestError(f"internal error: {type(exc).__name__}: {exc}", status=500))


def build_app(service: Service, settings: Settings | None = None) -> Starlette:
    """The app serving ``service``: the routes, the error handlers and the guards."""
    settings = settings or Settings()
    app = Starlette(
        routes=ROUTES,
        exception_handlers={RequestError: on_request_error, HTTPException: on_http_error, Exception: on_crash},
    )
    app.state.service, app.state.settings = service, settings
    if settings.cors:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(_KeyCheck, key=settings.api_key.encode() if settings.api_key else None)
    app.add_middleware(_SameMachine, settings=settings)
    app.add_middleware(_AccessLog, settings=settings)
    return app
