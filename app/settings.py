"""The one settings class: a YAML profile file, overridden by ``PROREASON_*`` environment variables.

Precedence (highest first): explicit arguments > environment > the profile file > defaults.
Nested fields use ``__`` in environment variables, e.g. ``PROREASON_SERVER__PORT=9000`` or
``PROREASON_MODELS__VISION__BASE_URL=http://vlm:8000/v1``.

The profile is a name of a file in ``configs/`` (``default``, ``vllm``, ``pure``, ``tiny`` ...) or a
path to a YAML file; chosen with ``--profile`` or ``PROREASON_PROFILE``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
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
from models.video import (
    DEFAULT_FRAME_SIDE,
    DEFAULT_MAX_VIDEO_BYTES,
    DEFAULT_MAX_VIDEO_DURATION_S,
    DEFAULT_MAX_VIDEO_FRAMES,
    DEFAULT_MAX_VIDEO_PIXELS,
    DEFAULT_VIDEO_FRAMES,
    Sampling,
    VideoLimits,
)

ENV_PREFIX = "PROREASON_"

#: ``PROREASON_*`` variables that are no settings field but are read by the project:
#: the settings locators (read here), the compose file's image tag (interpolated by docker
#: compose on the host), and the opt-in switches of the test suite. Any other ``PROREASON_*``
#: variable is a typo and refuses to start (``unknown_env_vars``).
NON_FIELD_VARS = frozenset(
    {
        f"{ENV_PREFIX}PROFILE",
        f"{ENV_PREFIX}CONFIGS_DIR",
        f"{ENV_PREFIX}IMAGE_TAG",  # docker/docker-compose.yml: image: proreason:${...}
        f"{ENV_PREFIX}DEMO_MODELS",  # tests/integration: run on the demo models
        f"{ENV_PREFIX}PARSE_EXAMPLES",  # tests/agents/test_parsing.py: extra examples
        f"{ENV_PREFIX}CHROMIUM",  # tests/browser: the chromium executable
        f"{ENV_PREFIX}BROWSER_ARTIFACTS",  # tests/browser: where screenshots go
        f"{ENV_PREFIX}API_KEY",  # client side: the playground's copied curl/Python snippets
    }
)


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
    #: Bearer API keys; empty list: no authentication, allowed only on a loopback ``host``
    #: unless ``allow_unauthenticated`` is true
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    #: serve without API keys on a non-loopback host (e.g. behind an authenticating proxy);
    #: a warning is logged at start
    allow_unauthenticated: bool = False
    #: a Bearer token accepted on /metrics only (for Prometheus), besides the API keys
    metrics_token: SecretStr | None = None
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

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():  # PROREASON_SERVER__METRICS_TOKEN=""
            return None
        return value

    @property
    def loopback(self) -> bool:
        """``host`` only accepts connections from this machine."""
        return is_loopback(self.host)

    @property
    def open_to_network(self) -> bool:
        """Reachable from other machines with no API key (allowed by allow_unauthenticated)."""
        return not self.api_keys and not self.loopback

    @model_validator(mode="after")
    def _keys_off_loopback(self) -> ServerConfig:
        if self.open_to_network and not self.allow_unauthenticated:
            raise PydanticCustomError(
                "unauthenticated_bind",
                "host {host} is not loopback and server.api_keys is empty: set server.api_keys "
                "(PROREASON_SERVER__API_KEYS=key1,key2), bind 127.0.0.1, or set "
                "server.allow_unauthenticated: true (PROREASON_SERVER__ALLOW_UNAUTHENTICATED=true) "
                "to serve without authentication",
                {"host": self.host},
            )
        return self


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost``; every other name or address (0.0.0.0, ::, a
    hostname) may be reachable from the network."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


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
    #: allow fetching http(s) image (and video) URLs at all
    allow_remote: bool = True
    #: largest encoded video (downloaded, data URL or upload), bytes
    max_video_bytes: int = Field(DEFAULT_MAX_VIDEO_BYTES, ge=1024)
    #: longest video, seconds (read from the container before any frame is decoded)
    max_video_duration_s: float = Field(DEFAULT_MAX_VIDEO_DURATION_S, gt=0)
    #: largest video resolution, width x height pixels (from the container, before decoding)
    max_video_pixels: int = Field(DEFAULT_MAX_VIDEO_PIXELS, ge=1)
    #: frames sampled from a video when the request names no number
    video_frames: int = Field(DEFAULT_VIDEO_FRAMES, ge=1)
    #: the most frames a request may ask for (each is an image for the vision expert)
    max_video_frames: int = Field(DEFAULT_MAX_VIDEO_FRAMES, ge=1)
    #: how frames are chosen when the request does not say: uniform or scene (scene changes)
    video_sampling: Sampling = "uniform"
    #: sampled frames are downscaled so their longest side is at most this
    video_frame_side: int = Field(DEFAULT_FRAME_SIDE, ge=16)

    @field_validator("allow_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):  # PROREASON_MEDIA__ALLOW_HOSTS="images.internal,10.1.0.0/16"
            return [h.strip() for h in value.split(",") if h.strip()]
        return value

    @model_validator(mode="after")
    def _frames_within_limit(self) -> MediaConfig:
        if self.video_frames > self.max_video_frames:
            raise PydanticCustomError(
                "video_frames",
                "media.video_frames ({frames}) is more than media.max_video_frames ({limit})",
                {"frames": self.video_frames, "limit": self.max_video_frames},
            )
        return self

    @property
    def video_limits(self) -> VideoLimits:
        return VideoLimits(
            max_bytes=self.max_video_bytes,
            max_duration_s=self.max_video_duration_s,
            max_pixels=self.max_video_pixels,
            max_frames=self.max_video_frames,
            frame_side=self.video_frame_side,
        )


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

    def __init__(self, **values: Any) -> None:
        check_env_names(os.environ)
        super().__init__(**values)

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


# ------------------------------------------------------------------------- PROREASON_* names


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X``, ``X | None``; None for a leaf field."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        found = [m for m in map(_model_in, get_args(annotation)) if m is not None]
        return found[0] if len(found) == 1 else None
    return None


def _is_mapping(annotation: Any) -> bool:
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_is_mapping(a) for a in get_args(annotation))
    return get_origin(annotation) is dict or annotation is dict


def field_paths(
    model: type[BaseModel] | None = None, prefix: str = ""
) -> Iterator[tuple[str, bool]]:
    """Every settings field as (dotted path, takes any sub-key), sections included:
    ``server``, ``server.port``, ``models.vision.base_url``, ``models.vision.engine_args``
    (a mapping: ``..._ENGINE_ARGS__MAX_MODEL_LEN`` sets one key) ..."""
    for name, info in (model or Settings).model_fields.items():
        path = f"{prefix}{name}"
        yield path, _is_mapping(info.annotation)
        sub = _model_in(info.annotation)
        if sub is not None:
            yield from field_paths(sub, f"{path}.")


def env_name(path: str) -> str:
    """``server.port`` -> ``PROREASON_SERVER__PORT``."""
    return ENV_PREFIX + path.replace(".", "__").upper()


def unknown_env_vars(environ: Mapping[str, str]) -> dict[str, str | None]:
    """Each ``PROREASON_*`` name that is no settings field -> the closest valid name, or None."""
    paths = dict(field_paths())
    valid = {env_name(p): p for p in paths}
    mappings = tuple(env_name(p) + "__" for p, any_key in paths.items() if any_key)
    unknown: dict[str, str | None] = {}
    for name in environ:
        upper = name.upper()
        if (
            not upper.startswith(ENV_PREFIX)
            or upper in valid
            or upper in NON_FIELD_VARS
            or upper.startswith(mappings)
        ):
            continue
        # compared without the common prefix, which would make every name look close
        names = {n[len(ENV_PREFIX) :]: n for n in [*valid, *NON_FIELD_VARS]}
        close = difflib.get_close_matches(upper[len(ENV_PREFIX) :], names, n=1, cutoff=0.6)
        unknown[name] = names[close[0]] if close else None
    return unknown


def check_env_names(environ: Mapping[str, str]) -> None:
    """Refuse ``PROREASON_*`` variables that name no setting (a typo would be ignored
    silently): one error per variable, located at its name, naming the closest valid one."""
    errors: list[InitErrorDetails] = []
    for name, close in sorted(unknown_env_vars(environ).items()):
        if close is None:
            hint = "no setting has this name"
        elif close in NON_FIELD_VARS:
            hint = f"did you mean {close}?"
        else:
            field = close[len(ENV_PREFIX) :].lower().replace("__", ".")
            hint = f"did you mean {close} ({field})?"
        errors.append(
            {
                "type": PydanticCustomError(
                    "unknown_env_var", "unknown PROREASON_ variable, {hint}", {"hint": hint}
                ),
                "loc": (name,),
                "input": environ[name],
            }
        )
    if errors:
        raise ValidationError.from_exception_data("Settings", errors)


def load_settings(profile: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the settings once (at start-up); pass the object on, never re-read it."""
    if profile is not None:
        overrides["profile"] = str(profile)
    return Settings(**overrides)
