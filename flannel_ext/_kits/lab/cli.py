"""(Placeholder: filled in by its issue.)"""


def register(subparsers):
    """Add this module's subcommand (not yet implemented)."""
