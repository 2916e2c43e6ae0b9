"""Default paths, defined once: the CLI, the runtime, the stores, the CNI plugin and the
manifest all take them from here (flanneld's defaults where flanneld has one)."""
from __future__ import annotations

#: hook working directory, programmed-state file and stats (ours; flanneld keeps none)
STATE_DIR = "/var/lib/flannel-ext"
#: the SQLite lease store used when no store is named
STORE_PATH = f"{STATE_DIR}/leases.db"
STORE_URL = f"sqlite:{STORE_PATH}"
#: flanneld's --subnet-file default, read by the flannel CNI plugin
SUBNET_FILE = "/run/flannel/subnet.env"
#: flanneld's --net-config-path default (kube-flannel.yml mounts its ConfigMap here)
NET_CONF = "/etc/kube-flannel/net-conf.json"
