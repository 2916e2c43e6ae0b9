"""The subcommands of `flannel-ext`, one module each, named after the command."""
