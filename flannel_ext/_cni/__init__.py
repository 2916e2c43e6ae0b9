"""The flannel-ext CNI plugin (entry point: `flannel_ext.cni`)."""
