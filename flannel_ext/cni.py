"""Entry point of the `flannel-ext-cni` binary (the CNI plugin lives in `flannel_ext._cni`)."""
import sys

from flannel_ext._cni.plugin import main

if __name__ == "__main__":
    sys.exit(main())
