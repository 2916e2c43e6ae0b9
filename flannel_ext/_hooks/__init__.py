"""The hook layer: the Hook protocol, the shell-command hook and Python hook loading.

Hooks know nothing of stores: they receive leases and a context, and program the kernel.
"""
