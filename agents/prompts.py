"""Prompt templates as data: ``configs/prompts/*.yaml``, loaded and checked once at start-up.

Every YAML file in the folder is a mapping ``name -> {system?: str, user: str}``; the files are
merged (a name defined twice is an error). They form the ``default`` prompt set.

Other prompt sets live in subfolders, ``configs/prompts/<set>/*.yaml`` (e.g. ``reference``, the
authors' text protocol): a set is an overlay, its prompts replace the default ones of the same
name and it inherits the rest. An optional ``<set>/set.yaml`` describes the set::

    description: the authors' released protocol, paraphrased
    structured_decisions: false   # its decisions are text: never send JSON schemas

A run picks its set by name (``RunOptions.prompts``, ``AgentConfig.prompts``); every set is loaded
and validated at start-up by :meth:`PromptSet.load_sets`.

``user`` is a :meth:`str.format` template; ``system`` is plain text. :data:`PROMPT_FIELDS`
declares, per prompt, the placeholders it must use and the ones it may use. Loading fails with
:class:`PromptError` when a prompt is missing, unknown, uses an undeclared placeholder, or lacks a
required one, so a bad template stops the service at start-up instead of failing a request later.
"""

from __future__ import annotations

import logging
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from configs import bundled_dir

logger = logging.getLogger(__name__)



_ANSWERING = (frozenset({"question", "answer_format"}), frozenset({"history"}))

#: prompt name -> (placeholders it must use, placeholders it may also use)
PROMPT_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # the ProReason loop
    "dispatcher": (frozenset({"question", "memory"}), frozenset({"history", "last_expert"})),
    "dispatcher_parallel": (
        frozenset({"question", "memory", "max_questions"}),
        frozenset({"history", "last_expert"}),
    ),
    # the dispatcher when the run offers the OCR expert too (optional prompts, see OPTIONAL)
    "dispatcher_ocr": (frozenset({"question", "memory"}), frozenset({"history", "last_expert"})),
    "dispatcher_parallel_ocr": (
        frozenset({"question", "memory", "max_questions"}),
        frozenset({"history", "last_expert"}),
    ),
    # the vision expert sees the sub-question and nothing else (no question, memory or format)
    "vision": (frozenset({"sub_question"}), frozenset()),
    "insight": (frozenset({"memory", "sub_question"}), frozenset({"history"})),
    "referee": (frozenset({"question", "memory"}), frozenset({"history"})),
    "summarizer": (frozenset({"question", "memory", "answer_format"}), frozenset({"history"})),
    "fallback": _ANSWERING,
    "no_image": _ANSWERING,
    # baselines
    "direct": _ANSWERING,
    "cot": _ANSWERING,
    "ccot_graph": (frozenset({"question"}), frozenset()),
    "ccot_answer": (
        frozenset({"question", "scene_graph", "answer_format"}),
        frozenset({"history"}),
    ),
    "caption": (frozenset(), frozenset()),
    "caption_answer": (
        frozenset({"question", "caption", "answer_format"}),
        frozenset({"history"}),
    ),
    # answer formats and blocks
    "answer_direct_open": (frozenset(), frozenset()),
    "answer_direct_choice": (frozenset(), frozenset()),
    "answer_summary_open": (frozenset(), frozenset()),
    "answer_summary_choice": (frozenset(), frozenset()),
    "answer_step_open": (frozenset(), frozenset()),
    "answer_step_choice": (frozenset(), frozenset()),
    "options": (frozenset({"options"}), frozenset()),
    "history": (frozenset({"turns"}), frozenset()),
    "memory_empty": (frozenset(), frozenset()),
    # {n}: the entry's number (the reference set writes entries unnumbered)
    "memory_vision": (frozenset({"content"}), frozenset({"n", "sub_question"})),
    "memory_insight": (frozenset({"content"}), frozenset({"n", "sub_question"})),
    "memory_referee": (frozenset({"content"}), frozenset({"n", "sub_question"})),
    "memory_ocr": (frozenset({"content"}), frozenset({"n", "sub_question"})),
    "omitted_notes": (frozenset({"count"}), frozenset()),
    "omitted_turns": (frozenset({"count"}), frozenset()),
    # a question about a video (optional prompts, see OPTIONAL): the header and the label of
    # each frame the vision expert sees, and the block the other roles get in {history}
    "video_frames": (frozenset(), frozenset({"count", "duration"})),
    "video_frame": (frozenset({"time"}), frozenset({"n"})),
    "video_moment": (frozenset({"time"}), frozenset({"n"})),
    "video_context": (frozenset({"frames"}), frozenset({"count", "duration"})),
}


#: the prompts a run with the OCR expert needs
OCR_PROMPTS: frozenset[str] = frozenset({"dispatcher_ocr", "dispatcher_parallel_ocr", "memory_ocr"})
#: the prompts a question about a video needs
VIDEO_PROMPTS: frozenset[str] = frozenset(
    {"video_frames", "video_frame", "video_moment", "video_context"}
)
#: prompts a folder may leave out: the OCR expert's and the video ones (a run that uses them
#: needs them, see :meth:`PromptSet.has`); so a custom prompts_dir written before them still loads
OPTIONAL: frozenset[str] = OCR_PROMPTS | VIDEO_PROMPTS


class PromptError(ValueError):
    """The prompt templates are missing or malformed (a start-up configuration error)."""


@dataclass(frozen=True)
class Prompt:
    name: str
    user: str
    system: str | None = None
    #: the placeholders the user template uses
    fields: frozenset[str] = frozenset()

    def render(self, **fields: Any) -> str:
        """Fill the user template. Extra fields are ignored; every used field must be given."""
        return self.user.format(**fields)


def default_prompts_dir() -> Path:
    """The bundled templates (package data of ``configs``)."""
    return bundled_dir() / "prompts"


def _fields(name: str, template: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # unbalanced braces
        raise PromptError(f"prompt {name!r}: bad template: {exc}") from exc
    used: set[str] = set()
    for _, field_name, format_spec, conversion in parsed:
        if field_name is None:
            continue
        if not field_name.isidentifier() or format_spec or conversion:
            raise PromptError(
                f"prompt {name!r}: placeholder {{{field_name}}} must be a plain name "
                "(double literal braces: {{ }})"
            )
        used.add(field_name)
    return used


def _check(name: str, entry: Any, source: Path) -> Prompt:
    if not isinstance(entry, dict) or not isinstance(entry.get("user"), str):
        raise PromptError(f"prompt {name!r} in {source}: needs a 'user' template string")
    unknown_keys = set(entry) - {"user", "system"}
    if unknown_keys:
        raise PromptError(f"prompt {name!r} in {source}: unknown keys {sorted(unknown_keys)}")
    system = entry.get("system")
    if system is not None and not isinstance(system, str):
        raise PromptError(f"prompt {name!r} in {source}: 'system' must be a string")
    required, optional = PROMPT_FIELDS[name]
    used = _fields(name, entry["user"])
    undeclared = used - required - optional
    if undeclared:
        raise PromptError(
            f"prompt {name!r} in {source}: unknown placeholder(s) "
            f"{sorted(undeclared)}; allowed: {sorted(required | optional)}"
        )
    missing = required - used
    if missing:
        raise PromptError(f"prompt {name!r} in {source}: missing placeholder(s) {sorted(missing)}")
    return Prompt(
        name=name,
        user=entry["user"],
        system=system.strip() if system else None,
        fields=frozenset(used),
    )


DEFAULT_SET = "default"
#: a prompt set's description file (not templates)
SET_FILE = "set.yaml"
_SET_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_SET_KEYS = frozenset({"description", "structured_decisions"})


class PromptSet:
    """All templates of one prompt set, validated. Look one up with ``prompts["dispatcher"]``."""

    def __init__(
        self,
        prompts: dict[str, Prompt],
        source: Path,
        *,
        name: str = DEFAULT_SET,
        structured: bool = True,
        description: str = "",
    ) -> None:
        self._prompts = prompts
        self.source = source
        self.name = name
        #: False: the set's decisions are a text protocol, so no JSON schema is ever sent
        self.structured = structured
        self.description = description

    def __getitem__(self, name: str) -> Prompt:
        return self._prompts[name]

    def has(self, *names: str) -> bool:
        return all(name in self._prompts for name in names)

    def text(self, name: str, **fields: Any) -> str:
        return self._prompts[name].render(**fields)

    @classmethod
    def load(cls, folder: Path | None = None) -> PromptSet:
        """The default set: the ``*.yaml`` files of ``folder`` (not its subfolders)."""
        folder = Path(folder).expanduser() if folder is not None else default_prompts_dir()
        files = _templates(folder)
        if not files:
            raise PromptError(f"no prompt templates (*.yaml) in {folder}")
        raw = _read(files)
        missing = sorted(set(PROMPT_FIELDS) - OPTIONAL - set(raw))
        if missing:
            raise PromptError(f"prompt(s) missing from {folder}: {missing}")
        prompts = {name: _check(name, entry, path) for name, (entry, path) in raw.items()}
        logger.debug("loaded %d prompts from %s", len(prompts), folder)
        return cls(prompts, folder)

    def overlay(self, folder: Path) -> PromptSet:
        """The set in ``folder``: its templates replace this set's of the same name."""
        name = folder.name
        if not _SET_NAME.match(name) or name == DEFAULT_SET:
            raise PromptError(f"{folder}: a prompt set needs a lower-case name other than "
                              f"{DEFAULT_SET!r}")  # fmt: skip
        meta: dict[str, Any] = {}
        meta_path = folder / SET_FILE
        if meta_path.is_file():
            meta = _yaml(meta_path)
            unknown = set(meta) - _SET_KEYS
            if unknown:
                raise PromptError(f"{meta_path}: unknown keys {sorted(unknown)}")
            if not isinstance(meta.get("structured_decisions", True), bool):
                raise PromptError(f"{meta_path}: 'structured_decisions' must be true or false")
        files = _templates(folder)
        if not files:
            raise PromptError(f"prompt set {name!r}: no templates (*.yaml) in {folder}")
        prompts = dict(self._prompts)
        for key, (entry, path) in _read(files).items():
            prompts[key] = _check(key, entry, path)
        logger.debug("prompt set %r: %d templates of its own", name, len(files))
        return PromptSet(
            prompts,
            folder,
            name=name,
            structured=meta.get("structured_decisions", True),
            description=str(meta.get("description", "")).strip(),
        )

    @classmethod
    def load_sets(cls, folder: Path | None = None) -> dict[str, PromptSet]:
        """Every prompt set: ``default`` (the folder's files) and one per subfolder."""
        base = cls.load(folder)
        sets = {DEFAULT_SET: base}
        for sub in sorted(p for p in base.source.iterdir() if p.is_dir()):
            if _templates(sub) or (sub / SET_FILE).is_file():
                sets[sub.name] = base.overlay(sub)
        return sets


def _templates(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.yaml") if p.name != SET_FILE)


def _yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise PromptError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PromptError(f"{path}: expected a mapping")
    return data


def _read(files: list[Path]) -> dict[str, tuple[Any, Path]]:
    raw: dict[str, tuple[Any, Path]] = {}
    for path in files:
        for name, entry in _yaml(path).items():
            if name in raw:
                raise PromptError(f"prompt {name!r} defined twice ({raw[name][1]}, {path})")
            if name not in PROMPT_FIELDS:
                raise PromptError(
                    f"unknown prompt {name!r} in {path}; known: {sorted(PROMPT_FIELDS)}"
                )
            raw[name] = (entry, path)
    return raw
