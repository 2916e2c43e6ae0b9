"""User-facing tools built on the runtime: CLI, CNI plugin, lab, manifests, lint."""
