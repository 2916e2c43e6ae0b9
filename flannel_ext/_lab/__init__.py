"""The local lab: nodes are network namespaces, pods come from the real CNI plugins."""
