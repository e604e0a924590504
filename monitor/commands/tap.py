"""``framewatch tap``: OpenAI-compatible reverse proxy on :8001 that publishes inference events to Kafka."""

from __future__ import annotations

import argparse

from monitor import logs
from monitor.settings import Settings, SettingsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="settings file; FRAMEWATCH_* env vars win over it")
    parser.add_argument("--upstream", metavar="URL", help="overrides FRAMEWATCH_TAP_UPSTREAM")


def run(args: argparse.Namespace) -> int:
    try:
        settings = Settings.load(args.config)
        if args.upstream:
            settings.tap_upstream = args.upstream
            settings.validate()
    except SettingsError as exc:
        print(f"framewatch: configuration error: {exc}")
        return 2
    logs.configure(settings.log_level, settings.log_text)
    from monitor.tap import app  # imported after logging is configured

    return app.serve(settings)
