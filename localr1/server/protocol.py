"""The OpenAI and Ollama request bodies, checked and turned into one ``Generation``.

Pure logic, no web framework: every field a client may send is named here, with its type and range. A
field that asks for something localr1 does not do (n > 1, logprobs, images, audio) is refused with a
``RequestError`` naming it, as OpenAI refuses an argument it does not recognise; nothing is ignored
silently except fields that change nothing (``user``, ``metadata``, ``keep_alive``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from localr1 import limits
from localr1.events import ToolCall
from localr1.text.prompt import Message
from localr1.text.sampling import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, Sampling
from localr1.text.thinking import EFFORT_BUDGETS
from localr1.text.tools import NAME_PATTERN, Tool, new_call_id

MAX_BODY_BYTES = 8 << 20  # a 128k-token conversation is ~0.5 MB of text
MAX_MESSAGES = 4096
MAX_STOPS = 8
MAX_STOP_CHARS = 256
MAX_TOKENS = limits.MAX_CTX
MAX_GRAMMAR_CHARS = 64 << 10
MAX_TOOLS = 128  # OpenAI's own limit
MAX_TOOL_CALLS = 128  # in one assistant message of the history
MAX_DESCRIPTION_CHARS = 8 << 10
MAX_ID_CHARS = 256

ToolChoice = Literal["auto", "none", "required"]

ReasoningFormat = Literal["separate", "inline", "hidden"]
REASONING_FORMATS = ("separate", "inline", "hidden")


class RequestError(Exception):
    """A bad request: the HTTP status, a message for the client, and the parameter at fault."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code


@dataclass(frozen=True)
class Generation:
    """What one request asks for, whichever API it came through."""

    model: str | None
    messages: tuple[Message, ...] = ()  # chat requests
    raw_prompt: str | None = None  # completion requests: text the model continues as it is
    system: str | None = None  # Ollama's /api/generate "system"
    sampling: Sampling = field(default_factory=Sampling)
    stream: bool = False
    stop: tuple[str, ...] = ()
    reasoning: ReasoningFormat = "separate"
    include_usage: bool = False  # OpenAI stream_options.include_usage
    load_only: bool = False  # Ollama's preload: no prompt (generate) or no messages (chat), answered "load"
    tools: tuple[Tool, ...] = ()  # the functions the model is told of (none with tool_choice "none")
    tool_choice: ToolChoice = "none"  # "required": the answer is a call (of ``tools``: one, for a named one)
    parallel_tool_calls: bool = True  # False: one call at most


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a RequestError (bad JSON, not an object, not UTF-8, too deep)."""
    try:
        value = json.loads(body)
    except UnicodeDecodeError:
        raise RequestError("the body is not UTF-8") from None
    except RecursionError:
        raise RequestError("the JSON body is nested too deeply") from None
    except ValueError as exc:
        raise RequestError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RequestError("the body must be a JSON object")
    try:  # a lone surrogate ("\ud800") is valid JSON but no text: it failed later, in the tokenizer (a 500)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError("the body holds a lone surrogate escape (\\ud800-\\udfff), which is not text") from None
    return value


# --- typed field readers ---------------------------------------------------------------------------------
def _number(body: dict, name: str, low: float, high: float, default: float | None) -> float | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"'{name}' must be a number", param=name)
    if not low <= value <= high:
        raise RequestError(f"'{name}' must be from {low:g} to {high:g}, not {value:g}", param=name)
    return float(value)


def _integer(body: dict, name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'{name}' must be an integer", param=name)
    if not low <= value <= high:
        raise RequestError(f"'{name}' must be from {low:,} to {high:,}, not {value:,}", param=name)
    return value


def _boolean(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"'{name}' must be true or false", param=name)
    return value


def _string(body: dict, name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise RequestError(f"'{name}' is required", param=name)
        return None
    if not isinstance(value, str):
        raise RequestError(f"'{name}' must be a string", param=name)
    return value


def _stops(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise RequestError(f"'{name}' must be a string or a list of strings", param=name)
    if len(stops) > MAX_STOPS:
        raise RequestError(f"'{name}' holds at most {MAX_STOPS} strings", param=name)
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise RequestError(f"each '{name}' string must have 1 to {MAX_STOP_CHARS} characters", param=name)
    return tuple(stops)


def _refuse(body: dict, name: str, allowed: Any = None, why: str = "") -> None:
    """Refuse ``name`` unless it is absent or one of the values that change nothing."""
    value = body.get(name)
    if value is None or value == allowed or (isinstance(allowed, tuple) and value in allowed):
        return
    raise RequestError(f"'{name}' is not supported by localr1{why}", param=name, code="unsupported_parameter")


def _unknown(body: dict, known: set[str]) -> None:
    extra = sorted(set(body) - known)
    if extra:
        raise RequestError(f"unrecognized request argument: {extra[0]}", param=extra[0], code="unknown_parameter")


def _reasoning_format(body: dict, default: ReasoningFormat) -> ReasoningFormat:
    value = _string(body, "reasoning_format") or default
    if value not in REASONING_FORMATS:
        raise RequestError(
            f"'reasoning_format' must be one of {', '.join(REASONING_FORMATS)}", param="reasoning_format"
        )
    return value  # type: ignore[return-value]


def _logit_bias(value: Any) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 1024:
        raise RequestError("'logit_bias' must map at most 1024 token ids to numbers", param="logit_bias")
    out: dict[int, float] = {}
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise RequestError(f"'logit_bias' key {key!r} is not a token id", param="logit_bias") from None
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
            raise RequestError("'logit_bias' values must be numbers from -100 to 100", param="logit_bias")
        out[token] = -math.inf if bias <= -100 else float(bias)
    return out


def _effort(value: Any, param: str) -> int | None:
    """reasoning_effort (OpenAI) / think (Ollama) as a thinking budget: low 1k, medium 4k, high unbounded."""
    if not isinstance(value, str) or value not in EFFORT_BUDGETS:
        raise RequestError(f"'{param}' must be one of {', '.join(EFFORT_BUDGETS)}", param=param)
    return EFFORT_BUDGETS[value]


def _sampling(body: dict, *, max_tokens: int | None, seed: int | None, effort: int | None = None) -> Sampling:
    grammar = _string(body, "grammar")  # llama-server's extension: a GBNF grammar the output must follow
    if grammar is not None and len(grammar) > MAX_GRAMMAR_CHARS:
        raise RequestError(f"'grammar' is longer than {MAX_GRAMMAR_CHARS >> 10} KiB", param="grammar")
    # localr1's thinking budget (budget forcing, localr1.text.thinking): an explicit count wins over an effort
    budget = _integer(body, "thinking_budget", 1, MAX_TOKENS)
    minimum = _integer(body, "thinking_min", 1, MAX_TOKENS)
    if budget is None:
        budget = effort
    if budget is not None and minimum is not None and minimum > budget:
        raise RequestError("'thinking_min' is larger than the thinking budget", param="thinking_min")
    return Sampling(
        think_budget=budget,
        think_min=minimum,
        grammar=grammar or None,
        temperature=_number(body, "temperature", 0.0, 2.0, DEFAULT_TEMPERATURE),
        top_p=_number(body, "top_p", 1e-6, 1.0, DEFAULT_TOP_P),
        top_k=_integer(body, "top_k", 0, 1 << 20) or 0,
        min_p=_number(body, "min_p", 0.0, 0.999, 0.0),
        seed=seed,
        max_tokens=max_tokens,
        logit_bias=_logit_bias(body.get("logit_bias")),
    )


def _messages(value: Any, *, ollama: bool = False) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    if len(value) > MAX_MESSAGES:
        raise RequestError(f"'messages' holds at most {MAX_MESSAGES:,} messages", param="messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(f"'{where}' must be an object", param=where)
        role = m.get("role")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            hint = (
                " ('function' messages are the old form: use tools and 'tool' messages)" if role == "function" else ""
            )
            raise RequestError(f"'{where}.role' must be system, user, assistant or tool{hint}", param=f"{where}.role")
        if m.get("images"):
            raise RequestError(f"'{where}.images' is not supported by localr1", param=f"{where}.images")
        calls = _history_calls(m.get("tool_calls"), f"{where}.tool_calls", ollama) if role == "assistant" else ()
        if role != "assistant" and m.get("tool_calls"):
            raise RequestError(f"'{where}.tool_calls' belongs in an assistant message", param=f"{where}.tool_calls")
        name = None
        if role == "tool":
            for key in ("tool_call_id", "tool_name", "name"):
                if key in m and (not isinstance(m[key], str) or len(m[key]) > MAX_ID_CHARS):
                    raise RequestError(
                        f"'{where}.{key}' must be a string of at most {MAX_ID_CHARS} characters",
                        param=f"{where}.{key}",
                    )
            name = m.get("tool_name") or m.get("name")
            if not out or not (out[-1].tool_calls or out[-1].role == "tool"):
                raise RequestError(
                    f"'{where}' is a tool's result without an assistant's tool_calls before it", param=f"{where}.role"
                )
        out.append(Message(role, _content(m.get("content"), f"{where}.content"), tool_calls=calls, name=name))
    # the last message is the user's or a tool's result, or the assistant's start of its reply (a prefill: the
    # model continues it), after a user's
    last = len(out) - 1
    if out[-1].role == "assistant" and last > 0 and out[-2].role == "user" and not out[-1].tool_calls:
        return tuple(out)
    if out[-1].role not in ("user", "tool"):
        raise RequestError(
            "the last message must be the user's or a tool's result (or the assistant's start of a reply, after "
            "the user's)",
            param=f"messages[{last}].role",
        )
    return tuple(out)


def _history_calls(value: Any, where: str, ollama: bool) -> tuple[ToolCall, ...]:
    """An assistant message's earlier tool calls (OpenAI: arguments as JSON text; Ollama: as an object)."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_TOOL_CALLS:
        raise RequestError(f"'{where}' must be a list of at most {MAX_TOOL_CALLS} calls", param=where)
    calls = []
    for j, call in enumerate(value):
        here = f"{where}[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise RequestError(f'\'{here}\' must be a function call: {{"function": {{"name": ...}}}}', param=here)
        name = function.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise RequestError(f"'{here}.function.name' must be 1 to 64 letters, digits, _ or -", param=here)
        arguments = function.get("arguments", {} if ollama else "{}")
        if isinstance(arguments, dict):
            arguments = json.dumps(arguments, ensure_ascii=False)
        if not isinstance(arguments, str):
            raise RequestError(f"'{here}.function.arguments' must be a JSON object's text", param=here)
        ident = call.get("id") or new_call_id()
        if not isinstance(ident, str) or len(ident) > MAX_ID_CHARS:
            raise RequestError(f"'{here}.id' must be a string of at most {MAX_ID_CHARS} characters", param=here)
        calls.append(ToolCall(ident, name, arguments))
    return tuple(calls)


def _tools(value: Any, param: str = "tools") -> tuple[Tool, ...]:
    """The functions a request offers (OpenAI's and Ollama's shape: {"type": "function", "function": {...}})."""
    if value is None or value == []:
        return ()
    if not isinstance(value, list):
        raise RequestError(f"'{param}' must be a list of tools", param=param)
    if len(value) > MAX_TOOLS:
        raise RequestError(f"'{param}' holds at most {MAX_TOOLS} tools", param=param)
    from localr1.engine.structured import check_schema
    from localr1.errors import UsageError

    tools: list[Tool] = []
    for i, item in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(item, dict) or item.get("type", "function") != "function":
            raise RequestError(f"'{where}' must be a function tool (type \"function\")", param=where)
        function = item.get("function")
        if not isinstance(function, dict):
            raise RequestError(f"'{where}.function' must be an object", param=where)
        name = function.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise RequestError(f"'{where}.function.name' must be 1 to 64 letters, digits, _ or -", param=where)
        if any(t.name == name for t in tools):
            raise RequestError(f"'{param}' names the function {name!r} twice", param=where)
        description = function.get("description") or ""
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
            raise RequestError(
                f"'{where}.function.description' must be a string of at most {MAX_DESCRIPTION_CHARS:,} characters",
                param=where,
            )
        parameters = function.get("parameters")
        if parameters is not None:
            try:
                check_schema(parameters, f"'{where}.function.parameters'")
            except UsageError as exc:
                raise RequestError(exc.message, param=where) from None
        tools.append(Tool(name, description, parameters or None))
    return tuple(tools)


def _tool_choice(value: Any, tools: tuple[Tool, ...]) -> tuple[ToolChoice, tuple[Tool, ...]]:
    """OpenAI's tool_choice: none, auto, required or a named function; the choice and the tools it allows."""
    if value is None:
        return ("auto" if tools else "none"), tools
    if value in ("none", "auto", "required"):
        if value == "required" and not tools:
            raise RequestError("'tool_choice' is required but no 'tools' are given", param="tool_choice")
        return value, tools if value != "none" else ()
    function = value.get("function") if isinstance(value, dict) and value.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise RequestError(
            '\'tool_choice\' must be none, auto, required or {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    chosen = tuple(t for t in tools if t.name == name)
    if not chosen:
        raise RequestError(f"'tool_choice' names {name!r}, which is not among the 'tools'", param="tool_choice")
    return "required", chosen


def _tool_grammar(
    choice: ToolChoice, tools: tuple[Tool, ...], parallel: bool, answer_schema: dict[str, Any] | None
) -> str | None:
    """The grammar of the answer after the thinking: a call where one is required; with auto and a response
    format, a call or the format's JSON."""
    if choice == "none" or (choice == "auto" and answer_schema is None):
        return None
    from localr1.engine.structured import tool_call_grammar
    from localr1.errors import UsageError

    try:
        return tool_call_grammar(tools, parallel=parallel, or_answer=answer_schema if choice == "auto" else None)
    except UsageError as exc:
        raise RequestError(exc.message, param="tools") from None


def _content(value: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of parts (text parts only)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(f"'{where}' may hold only text parts (images are not supported)", param=where)
            texts.append(part["text"])
        return "\n".join(texts)
    raise RequestError(f"'{where}' must be a string or a list of text parts", param=where)


# --- structured output: a grammar for the answer, after the thinking (engine/structured.py) ---------------
def _grammar_of(schema: Any, param: str) -> str:
    from localr1.engine.structured import schema_grammar
    from localr1.errors import UsageError

    try:
        return schema_grammar(schema, f"'{param}'")
    except UsageError as exc:
        raise RequestError(exc.message, param=param) from None


AnswerFormat = tuple[str, dict[str, Any]] | None  # a grammar for the answer, and the schema it came from


def _response_format(value: Any) -> AnswerFormat:
    """OpenAI's response_format: text (nothing), json_object (any JSON object) or json_schema."""
    from localr1.engine.structured import json_grammar

    if value is None or value == {"type": "text"}:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "json_object":
        return json_grammar(), {"type": "object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise RequestError(
                "'response_format.json_schema.schema' must be a JSON schema object", param="response_format"
            )
        return _grammar_of(spec["schema"], "response_format.json_schema.schema"), spec["schema"]
    raise RequestError("'response_format.type' must be text, json_object or json_schema", param="response_format")


def _ollama_format(value: Any) -> AnswerFormat:
    """Ollama's format: "json" or a JSON schema."""
    from localr1.engine.structured import json_grammar

    if value in (None, ""):
        return None
    if value == "json":
        return json_grammar(), {"type": "object"}
    if isinstance(value, dict):
        return _grammar_of(value, "format"), value
    raise RequestError("'format' must be \"json\" or a JSON schema object", param="format")


def _answer_grammar(
    answer_format: AnswerFormat, choice: ToolChoice, tools: tuple[Tool, ...], parallel: bool
) -> str | None:
    """The answer's grammar: a tool call where one is required; with auto and a format, a call or the
    format's JSON; else the format's, if any."""
    if choice == "required" or (choice == "auto" and answer_format is not None):
        return _tool_grammar(choice, tools, parallel, answer_format[1] if answer_format else None)
    return answer_format[0] if answer_format else None


def _with_answer_grammar(sampling: Sampling, grammar: str | None, param: str) -> Sampling:
    if grammar is None:
        return sampling
    if sampling.grammar:
        raise RequestError(f"'grammar' and '{param}' cannot both be given", param=param)
    return replace(sampling, answer_grammar=grammar)


# --- OpenAI --------------------------------------------------------------------------------------------
_OPENAI_COMMON = {
    "model", "stream", "stream_options", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "n",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "user", "metadata",
    "store", "service_tier", "reasoning_format", "grammar", "thinking_budget", "thinking_min",
}  # fmt: skip
_OPENAI_CHAT = _OPENAI_COMMON | {
    "messages", "max_tokens", "max_completion_tokens", "tools", "tool_choice", "functions", "function_call",
    "parallel_tool_calls", "response_format", "modalities", "audio", "prediction", "reasoning_effort",
    "web_search_options",
}  # fmt: skip
_OPENAI_COMPLETION = _OPENAI_COMMON | {"prompt", "max_tokens", "echo", "suffix", "best_of"}


def _openai_common(body: dict) -> dict[str, Any]:
    _refuse(body, "n", 1, " (one choice per request; send requests in parallel instead)")
    for name in ("presence_penalty", "frequency_penalty"):
        _number(body, name, -2.0, 2.0, 0.0)
        _refuse(body, name, (0, 0.0))
    _refuse(body, "logprobs", (False, None, 0))
    _refuse(body, "top_logprobs", (None, 0))
    options = body.get("stream_options")
    if options is not None and not (isinstance(options, dict) and set(options) <= {"include_usage"}):
        raise RequestError("'stream_options' may only hold include_usage", param="stream_options")
    return {
        "model": _string(body, "model"),
        "stream": _boolean(body, "stream", False),
        "include_usage": _boolean(options or {}, "include_usage", False),
        "stop": _stops(body.get("stop"), "stop"),
    }


def openai_chat(body: dict) -> Generation:
    _unknown(body, _OPENAI_CHAT)
    common = _openai_common(body)
    if body.get("functions"):
        raise RequestError("'functions' is the old form of tool calling: send 'tools'", param="functions")
    _refuse(body, "function_call", ("none", None), " (the old form of tool calling: send 'tool_choice')")
    tools = _tools(body.get("tools"))
    choice, offered = _tool_choice(body.get("tool_choice"), tools)
    named = isinstance(body.get("tool_choice"), dict)
    parallel = _boolean(body, "parallel_tool_calls", True) and not named
    _refuse(body, "modalities", (["text"], None))
    for name in ("audio", "prediction", "web_search_options"):
        _refuse(body, name)
    answer_grammar = _answer_grammar(_response_format(body.get("response_format")), choice, offered, parallel)
    effort = body.get("reasoning_effort")
    effort_budget = None if effort is None else _effort(effort, "reasoning_effort")
    max_tokens = _integer(body, "max_completion_tokens", 1, MAX_TOKENS)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, MAX_TOKENS)
    seed = _integer(body, "seed", -(2**63), 2**64 - 1)
    return Generation(
        model=common["model"],
        messages=_messages(body.get("messages")),
        sampling=_with_answer_grammar(
            _sampling(body, max_tokens=max_tokens, seed=None if seed is None else seed % 2**32, effort=effort_budget),
            answer_grammar,
            "response_format" if choice != "required" else "tool_choice",
        ),
        stream=common["stream"],
        stop=common["stop"],
        reasoning=_reasoning_format(body, "separate"),
        include_usage=common["include_usage"],
        tools=tools if choice != "none" else (),
        tool_choice=choice,
        parallel_tool_calls=parallel,
    )


def openai_completion(body: dict) -> Generation:
    _unknown(body, _OPENAI_COMPLETION)
    common = _openai_common(body)
    _refuse(body, "echo", False)
    _refuse(body, "suffix", ("",))
    _refuse(body, "best_of", 1)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise RequestError("'prompt' must be a non-empty string (one prompt per request)", param="prompt")
    seed = _integer(body, "seed", -(2**63), 2**64 - 1)
    return Generation(
        model=common["model"],
        raw_prompt=prompt,
        sampling=_sampling(
            body, max_tokens=_integer(body, "max_tokens", 1, MAX_TOKENS), seed=None if seed is None else seed % 2**32
        ),
        stream=common["stream"],
        stop=common["stop"],
        reasoning=_reasoning_format(body, "inline"),  # the text as the model wrote it
        include_usage=common["include_usage"],
    )


# --- Ollama --------------------------------------------------------------------------------------------
# load-time options (num_thread, num_gpu, num_batch, ...) are accepted and ignored, as Ollama ignores them
# once the model is loaded; only a context larger than a slot's (num_ctx) is refused
_OLLAMA_OPTIONS = {
    "temperature", "top_p", "top_k", "min_p", "seed", "num_predict", "stop", "num_ctx", "num_thread", "num_gpu",
    "num_batch", "repeat_penalty", "presence_penalty", "frequency_penalty", "repeat_last_n", "mirostat",
    "typical_p", "tfs_z", "numa", "use_mmap", "use_mlock", "num_keep", "penalize_newline", "low_vram", "main_gpu",
    "thinking_budget", "thinking_min",
    # mirostat's own settings (mirostat itself must stay 0) and load-time options older clients still send
    "mirostat_eta", "mirostat_tau", "f16_kv", "vocab_only", "num_gqa", "rope_frequency_base",
    "rope_frequency_scale", "embedding_only", "logits_all",
}  # fmt: skip


def _ollama_options(body: dict, n_ctx_slot: int, tools: tuple[Tool, ...] = ()) -> tuple[Sampling, tuple[str, ...]]:
    options = body.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise RequestError("'options' must be an object", param="options")
    _unknown(options, _OLLAMA_OPTIONS)
    for name in ("presence_penalty", "frequency_penalty"):
        _refuse(options, name, (0, 0.0))
    _refuse(options, "repeat_penalty", (1, 1.0))
    _refuse(options, "mirostat", 0)
    _refuse(options, "typical_p", (1, 1.0))
    _refuse(options, "tfs_z", (1, 1.0))
    num_ctx = _integer(options, "num_ctx", 1, limits.MAX_CTX)
    if num_ctx is not None and num_ctx > n_ctx_slot:
        raise RequestError(
            f"'num_ctx' {num_ctx:,} is larger than this server's context ({n_ctx_slot:,} tokens per request); "
            "restart `localr1 serve` with a larger --ctx",
            param="options.num_ctx",
        )
    num_predict = _integer(options, "num_predict", -2, MAX_TOKENS)
    seed = _integer(options, "seed", -(2**63), 2**64 - 1)
    think = body.get("think")
    sampling = _sampling(
        options,
        max_tokens=num_predict if num_predict and num_predict > 0 else None,
        seed=None if seed is None or seed < 0 else seed % 2**32,
        effort=_effort(think, "think") if isinstance(think, str) else None,
    )
    grammar = _answer_grammar(_ollama_format(body.get("format")), "auto" if tools else "none", tools, True)
    sampling = _with_answer_grammar(sampling, grammar, "format")
    return sampling, _stops(options.get("stop"), "options.stop")


def _think(body: dict) -> ReasoningFormat:
    think = body.get("think")
    if think is None or think is True or (isinstance(think, str) and think in EFFORT_BUDGETS):
        return "separate"
    if think is False:
        return "hidden"
    raise RequestError("'think' must be true or false", param="think")


_OLLAMA_COMMON = {"model", "stream", "options", "keep_alive", "think", "format", "tools", "context", "images"}


def _ollama_refusals(body: dict) -> None:
    for name in ("images", "context"):
        if body.get(name):
            raise RequestError(f"'{name}' is not supported by localr1", param=name)


def ollama_chat(body: dict, n_ctx_slot: int) -> Generation:
    _unknown(body, _OLLAMA_COMMON | {"messages"})
    _ollama_refusals(body)
    tools = _tools(body.get("tools"))
    sampling, stops = _ollama_options(body, n_ctx_slot, tools)
    if body.get("messages") in (None, []):  # Ollama's way to load a model before the first question
        return Generation(model=_string(body, "model"), stream=_boolean(body, "stream", True), load_only=True)
    return Generation(
        model=_string(body, "model"),
        messages=_messages(body.get("messages"), ollama=True),
        sampling=sampling,
        stream=_boolean(body, "stream", True),  # Ollama streams unless told not to
        stop=stops,
        reasoning=_think(body),
        tools=tools,
        tool_choice="auto" if tools else "none",
    )


def ollama_generate(body: dict, n_ctx_slot: int) -> Generation:
    _unknown(body, _OLLAMA_COMMON | {"prompt", "system", "raw", "suffix", "template"})
    _ollama_refusals(body)
    if body.get("tools"):  # as Ollama: tools are for /api/chat, where their results can come back
        raise RequestError("'tools' is for /api/chat", param="tools")
    _refuse(body, "suffix", "")
    _refuse(body, "template", "")
    sampling, stops = _ollama_options(body, n_ctx_slot)
    prompt = _string(body, "prompt") or ""
    raw = _boolean(body, "raw", False)
    if prompt == "":  # Ollama's way to load a model before the first question
        return Generation(model=_string(body, "model"), stream=_boolean(body, "stream", True), load_only=True)
    if not prompt.strip():
        raise RequestError("'prompt' must not be only white space", param="prompt")
    system = _string(body, "system")
    return Generation(
        model=_string(body, "model"),
        messages=() if raw else tuple([*([Message("system", system)] if system else []), Message("user", prompt)]),
        raw_prompt=prompt if raw else None,
        sampling=sampling,
        stream=_boolean(body, "stream", True),
        stop=stops,
        reasoning=_think(body),
    )
