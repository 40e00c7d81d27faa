"""The command line: ``python -m miragic_nb batch``, ``demo`` and ``app``."""
