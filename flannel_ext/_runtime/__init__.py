"""The runtime: joins config, a lease store and a hook into a running node."""
