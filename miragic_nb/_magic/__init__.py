"""The ``%%miragic`` cell magic and the ``%miragic`` subcommands."""
