"""``framewatch run``: the sidecar. Consumes ``llm.inferences``, serves ``/metrics`` on :9464."""

from __future__ import annotations

import argparse

from monitor import logs
from monitor.settings import Settings, SettingsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="settings file; FRAMEWATCH_* env vars win over it")


def run(args: argparse.Namespace) -> int:
    try:
        settings = Settings.load(args.config)
    except SettingsError as exc:
        print(f"framewatch: configuration error: {exc}")
        return 2
    logs.configure(settings.log_level, settings.log_text)
    from monitor.sidecar import app as sidecar  # imported after logging is configured

    app = sidecar.build(settings)
    app.install_signal_handlers()
    return app.run()
