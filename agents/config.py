"""Agent settings (the ``agent`` section of the settings file)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from agents.types import MAX_ROUNDS, Method, Mode


class AgentConfig(BaseModel):
    """The server's defaults for every run (a request may override method, mode, rounds ...)."""

    method: Method = "proreason"
    mode: Mode = "assisted"
    max_rounds: int = Field(8, ge=1, le=MAX_ROUNDS)
    #: default max new tokens per model call
    max_tokens: int = Field(512, ge=1)
    temperature: float | None = None
    parallel_perception: bool = False
    #: most visual sub-questions one dispatcher decision may ask in parallel-perception mode
    max_parallel_questions: int = Field(3, ge=1, le=8)
    #: ask the backend for JSON-schema constrained decisions where it supports them
    structured_decisions: bool = True
    #: prompt budget when the model does not report its context length (tokens)
    default_context_length: int = 8192
    #: folder with the prompt templates (YAML); None: the bundled configs/prompts
    prompts_dir: Path | None = None
    #: the prompt set runs use unless a request picks another: "default" (ours, JSON decisions)
    #: or "reference" (the authors' text protocol), or any set folder under prompts_dir
    prompts: str = "default"
    #: the LoRA adapter each role answers with, role -> adapter name (one of its backend's
    #: ``adapters``), e.g. ``{dispatcher: disp, referee: ref}``; roles not named use the base
    adapters: dict[str, str] = Field(default_factory=dict)
    #: offer the dispatcher the OCR expert (RapidOCR, the ``ocr`` extra) unless a request says
    #: otherwise; requests may also turn it on when this is off (if the extra is installed)
    ocr: bool = False
    #: seconds one image's OCR may take (queueing included) before the call fails
    ocr_timeout_s: float = Field(30.0, gt=0)
    #: images whose recognised text is kept (by content hash, shared by all requests)
    ocr_cache_size: int = Field(256, ge=0)
    #: recognised lines below this confidence are dropped
    ocr_min_score: float = Field(0.5, ge=0, le=1)
