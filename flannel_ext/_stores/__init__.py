"""The lease layer: flannel's lease model and the stores that hold leases.

Stores know nothing of hooks. `open_store(url)` picks an implementation by URL scheme.
"""
from __future__ import annotations

import inspect

from flannel_ext._util.errors import ConfigError

_FORMS = "sqlite:PATH, etcd://HOST:PORT[,HOST:PORT...] or kube"


def open_store(url: str, **options):
    """The LeaseStore for a `--store` value: `sqlite:PATH`, `etcd://h:p[,h:p]`, `kube`.

    The etcd and kube stores are imported only when asked for (their client libraries
    are heavy). The sqlite store takes only the options it knows (a CLI passes its
    etcd/kube flags whatever the store), so a stray option never breaks a lab.
    """
    value = (url or "").strip()
    if value.startswith("sqlite:"):
        from flannel_ext._stores.sqlite import SqliteStore
        known = inspect.signature(SqliteStore.__init__).parameters
        return SqliteStore.from_url(value, **{k: v for k, v in options.items() if k in known})
    if value.startswith("etcd://"):
        from flannel_ext._stores.etcd import EtcdStore
        return EtcdStore.from_url(value, **options)
    if value == "kube":
        from flannel_ext._stores.kube import KubeStore
        return KubeStore.from_options(**options)
    raise ConfigError("--store", None, url, "unknown lease store", f"use {_FORMS}")
