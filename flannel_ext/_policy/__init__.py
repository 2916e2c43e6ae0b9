"""Network policy: Kubernetes NetworkPolicy enforced through a pluggable policy hook.

model (parse and validate) → compute + resolve (one node's PolicyState, incrementally) →
hook (the PolicyHook seam: nftables, log, yours). The agent runs inside `flannel-ext run
--policy`, fed by a source (file_source, kube_source), and writes policy-status.json.
"""
