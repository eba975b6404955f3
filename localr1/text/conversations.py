"""Conversations: what was said (thinking included, for the screen) and what goes back to the model.

A conversation is saved as one JSON file in the platformdirs data dir (``conversations/<id>.json``),
written atomically. Earlier thinking is kept for display but never sent back to the model (DeepSeek's
advice); :meth:`Conversation.messages` builds the history the prompt is rendered from.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from localr1.errors import LocalR1Error
from localr1.paths import data_dir
from localr1.text.prompt import Message
from localr1.text.reasoning import thought_summary

_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Turn:
    user: str = ""
    answer: str = ""
    reasoning: str = ""
    thinking_s: float = 0.0
    finish_reason: str = ""
    tokens: int = 0
    decode_tps: float = 0.0
    reasoning_tokens: int = 0


@dataclass
class Conversation:
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    title: str = "New chat"
    model: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    turns: list[Turn] = field(default_factory=list)
    system: str = ""

    def messages(self, next_user: str | None = None) -> list[Message]:
        """The history for the model: every question and answer, no thinking."""
        out: list[Message] = []
        if self.system.strip():
            out.append(Message("system", self.system))
        for t in self.turns:
            out.append(Message("user", t.user))
            if t.answer:
                out.append(Message("assistant", t.answer))
        if next_user is not None:
            out.append(Message("user", next_user))
        return out

    def add_turn(self, user: str) -> Turn:
        if not self.turns and self.title == "New chat":
            self.title = _title_from(user)
        turn = Turn(user=user)
        self.turns.append(turn)
        self.updated = time.time()
        return turn

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        if self.model:
            lines += [f"*Model: {self.model}*", ""]
        for t in self.turns:
            lines += ["## You", "", t.user, ""]
            if t.reasoning:
                quoted = "\n".join("> " + line if line else ">" for line in t.reasoning.splitlines())
                lines += [
                    f"<details><summary>{thought_summary(t.thinking_s, t.reasoning_tokens)}</summary>",
                    "",
                    quoted,
                    "",
                    "</details>",
                    "",
                ]
            lines += ["## R1", "", t.answer or "*(no answer)*", ""]
        return "\n".join(lines).rstrip() + "\n"


def _title_from(text: str) -> str:
    words = " ".join(text.split())
    return words[:60] + ("…" if len(words) > 60 else "") or "New chat"


MAX_FILE_BYTES = 64 << 20  # far above any chat; a bigger file is not one of ours


def _from_json(raw: object, conv_id: str) -> Conversation:
    """A saved conversation, every field checked for its type (a file is data, and may be damaged).

    The id is the file's name: a file whose content claims another id (a copy, a hand edit) is read under
    its own name, so two files never show up as one conversation."""
    if not isinstance(raw, dict):
        raise ValueError("it is not a JSON object")
    turns_raw = raw.get("turns", [])
    if not isinstance(turns_raw, list):
        raise ValueError("its turns are not a list")
    turns = [_typed(Turn, t, "a turn") for t in turns_raw]
    conv = _typed(Conversation, {k: v for k, v in raw.items() if k not in ("turns", "id")}, "the conversation")
    conv.id, conv.turns = conv_id, turns
    return conv


def _typed(cls, raw: object, what: str):
    """``cls(**raw)`` with each field of the dataclass checked against its default's type."""
    if not isinstance(raw, dict):
        raise ValueError(f"{what} is not a JSON object")
    defaults = cls()
    out = {}
    for name, value in raw.items():
        if not hasattr(defaults, name) or name == "turns":
            continue  # a field from a newer version: ignored
        expected = type(getattr(defaults, name))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise ValueError(f"{what}'s {name} is {type(value).__name__}, not {expected.__name__}")
        out[name] = value
    return cls(**out)


class ConversationStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or data_dir() / "conversations"

    def _path(self, conv_id: str) -> Path:
        if not _ID.match(conv_id):
            raise LocalR1Error(f"{conv_id!r} is not a conversation id")
        return self.root / f"{conv_id}.json"

    def save(self, conv: Conversation) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(conv.id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(conv), ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def load(self, conv_id: str) -> Conversation:
        path = self._path(conv_id)
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"it is larger than {MAX_FILE_BYTES >> 20} MiB")
            raw = json.loads(path.read_bytes().decode("utf-8"))
            return _from_json(raw, conv_id)
        except FileNotFoundError:
            raise LocalR1Error(f"no conversation {conv_id}") from None
        except (ValueError, TypeError, OSError, RecursionError) as exc:
            raise LocalR1Error(f"conversation file {path.name} is damaged: {exc}") from exc

    def list(self) -> list[Conversation]:
        out = []
        for path in self.root.glob("*.json") if self.root.is_dir() else []:
            try:
                out.append(self.load(path.stem))
            except LocalR1Error:
                continue  # a damaged file is skipped, not fatal
        return sorted(out, key=lambda c: c.updated, reverse=True)

    def rename(self, conv_id: str, title: str) -> Conversation:
        conv = self.load(conv_id)
        conv.title = title.strip() or conv.title
        self.save(conv)
        return conv

    def delete(self, conv_id: str) -> None:
        self._path(conv_id).unlink(missing_ok=True)

    def export(self, conv_id: str, dest: Path) -> Path:
        conv = self.load(conv_id)
        dest.write_text(conv.to_markdown(), encoding="utf-8")
        return dest
