"""The one settings class: a YAML profile file, overridden by ``PROREASON_*`` environment variables.

Precedence (highest first): explicit arguments > environment > the profile file > defaults.
Nested fields use ``__`` in environment variables, e.g. ``PROREASON_SERVER__PORT=9000`` or
``PROREASON_MODELS__VISION__BASE_URL=http://vlm:8000/v1``.

The profile is a name of a file in ``configs/`` (``default``, ``vllm``, ``pure``, ``tiny`` ...) or a
path to a YAML file; chosen with ``--profile`` or ``PROREASON_PROFILE``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from agents.config import AgentConfig
from configs import bundled_dir
from models.config import BackendConfig
from models.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE

ENV_PREFIX = "PROREASON_"


def configs_dir() -> Path:
    """Where named profiles (and their ``prompts/``) live: $PROREASON_CONFIGS_DIR, else the
    bundled ``configs`` package."""
    env = os.environ.get(f"{ENV_PREFIX}CONFIGS_DIR")
    return Path(env).expanduser() if env else bundled_dir()


def resolve_profile(profile: str | Path) -> Path:
    """A profile name (``vllm``) or a path to a YAML file -> the file. Raises FileNotFoundError."""
    path = Path(profile).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    named = configs_dir() / f"{profile}.yaml"
    if named.is_file():
        return named
    known = sorted(p.stem for p in configs_dir().glob("*.yaml"))
    raise FileNotFoundError(
        f"profile {str(profile)!r} not found (known profiles: {', '.join(known)})"
    )


class ModelsConfig(BaseModel):
    #: the LVLM (sees images): vision expert, fallback, and every role in pure mode
    vision: BackendConfig
    #: the text LLM for the text roles in assisted mode; None: pure deployment
    text: BackendConfig | None = None


class ServerConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    #: Bearer API keys; empty list: no authentication (bind to localhost or put a proxy in front)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    #: questions being answered at once; more get 429 with Retry-After
    max_in_flight: int = Field(64, ge=1)
    #: per-request deadline, seconds (504 with the partial trace on expiry)
    request_timeout_s: float = Field(300.0, gt=0)
    #: largest accepted request body, bytes
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: model names listed by /v1/models and accepted as `model` in chat completions
    served_model_prefix: str = "proreason"
    #: browser origins allowed to call the API (CORS); empty list: CORS off (same origin only)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):  # PROREASON_SERVER__API_KEYS="k1,k2"
            return [k.strip() for k in value.split(",") if k.strip()]
        return value


class MediaConfig(BaseModel):
    max_images: int = Field(8, ge=1)
    #: largest encoded image (downloaded or data URL), bytes
    max_image_bytes: int = Field(DEFAULT_MAX_IMAGE_BYTES, ge=1024)
    #: largest decoded image, pixels (checked from the header, before decoding)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    #: images are downscaled so their longest side is at most this
    max_side: int = Field(DEFAULT_MAX_SIDE, ge=16)
    fetch_timeout_s: float = Field(10.0, gt=0)
    max_redirects: int = Field(3, ge=0)
    #: hosts (exact names or IPs/CIDRs) that may be fetched even when private / loopback
    allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: allow fetching http(s) image URLs at all
    allow_remote: bool = True

    @field_validator("allow_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):  # PROREASON_MEDIA__ALLOW_HOSTS="images.internal,10.1.0.0/16"
            return [h.strip() for h in value.split(",") if h.strip()]
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    #: the profile this was loaded from (informational)
    profile: str = "default"
    models: ModelsConfig
    agent: AgentConfig = Field(default_factory=AgentConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)

    @model_validator(mode="after")
    def _prompts_beside_profiles(self) -> Settings:
        """Prompts come from the same configs folder as the profiles unless set explicitly."""
        if self.agent.prompts_dir is None and (configs_dir() / "prompts").is_dir():
            self.agent.prompts_dir = configs_dir() / "prompts"
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs = getattr(init_settings, "init_kwargs", {})
        profile = init_kwargs.get("profile") or os.environ.get(f"{ENV_PREFIX}PROFILE", "default")
        yaml_source = YamlConfigSettingsSource(settings_cls, yaml_file=resolve_profile(profile))
        return (init_settings, env_settings, yaml_source, file_secret_settings)


def load_settings(profile: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the settings once (at start-up); pass the object on, never re-read it."""
    if profile is not None:
        overrides["profile"] = str(profile)
    return Settings(**overrides)
