"""Subcommands of the ``qkv`` command, one module each (see qkv/cli.py)."""
