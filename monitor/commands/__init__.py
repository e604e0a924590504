"""One module per ``framewatch`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""
