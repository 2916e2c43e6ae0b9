"""Generic utilities with no knowledge of flannel-ext's domain layers."""
