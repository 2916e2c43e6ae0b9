"""The config layer: net-conf.json parsed and validated exactly as flannel does."""
