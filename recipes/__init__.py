"""Shipped dataplanes (installed as `flannel_ext.recipes`): host-gw and vxlan, shell and Python."""
