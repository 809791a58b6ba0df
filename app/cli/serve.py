"""``proreason serve``, ``build-tiny`` and ``profiles``."""

from __future__ import annotations

import argparse
import errno
import socket
from pathlib import Path

from pydantic import ValidationError

from app.cli.common import EXIT_FAILURE, CLIError, load_failure, load_settings, report_built
from models.errors import ModelLoadError


def check_port_free(host: str, port: int) -> None:
    """Fail in one line, before any model is loaded, when ``host:port`` cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CLIError(
                    f"port {port} on {host} is already in use (is the service already running? "
                    f"choose another with --port)",
                    EXIT_FAILURE,
                ) from None
            raise CLIError(
                f"cannot listen on {host}:{port}: {exc.strerror}", EXIT_FAILURE
            ) from None


def serve(args: argparse.Namespace) -> int:
    from app.main import run_server

    server = {k: v for k, v in (("host", args.host), ("port", args.port)) if v}
    settings = load_settings(args, server=server) if server else load_settings(args)
    check_port_free(settings.server.host, settings.server.port)
    try:
        run_server(settings)
    except ModelLoadError as exc:
        raise load_failure(settings, exc) from None
    return 0


def build_tiny(args: argparse.Namespace) -> int:
    from models.tiny import build_tiny_models

    return report_built(build_tiny_models(Path(args.dir).expanduser(), force=args.force), "tiny")


def profiles(args: argparse.Namespace) -> int:
    from app.settings import configs_dir
    from app.settings import load_settings as load

    for path in sorted(configs_dir().glob("*.yaml")):
        try:
            s = load(path.stem)
        except (ValidationError, FileNotFoundError) as exc:
            print(f"{path.stem:<16} (invalid: {type(exc).__name__})")
            continue
        text = f"{s.models.text.backend}:{s.models.text.model}" if s.models.text else "-"
        print(
            f"{path.stem:<16} mode={s.agent.mode:<8} vision={s.models.vision.backend}:"
            f"{s.models.vision.model}  text={text}"
        )
    return 0
