"""One module per `edgemm` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``.

The module docstring's first line is the command's one-line help. Keep imports at module level cheap:
the CLI imports every command module to build ``--help``.
"""
