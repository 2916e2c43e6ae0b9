"""The nftables hook's ruleset and transactions, as text (the netns tests load them)."""
from __future__ import annotations

from flannel_ext import Allow, PodPolicy, PolicyState, PortRange, RulePeers
from flannel_ext._policy.nftables import build_ruleset, render_diff, render_full

PEERS = RulePeers("abc", "ingress", cidrs=("10.0.1.0/24", "10.0.2.7/32"))
NAMED = RulePeers("def", "egress", any=True, named=(("10.0.2.7", "TCP", 8080),))


PORTS = (PortRange("TCP", 80), PortRange("SCTP", 90, 100), PortRange("UDP"))


def state(peers=PEERS, ports=PORTS):
    pod = PodPolicy("10.0.0.2", "x", "a", ingress=(Allow("abc", ports),), egress=(Allow("def", ()),))
    return PolicyState("n1", 1, {"10.0.0.2": pod, "10.0.0.3": PodPolicy("10.0.0.3", "x", "b")},
                       {"abc": peers, "def": NAMED}, ("10.0.0.1",))


def test_full_ruleset_uses_sets_maps_and_one_chain_per_isolated_pod():
    script = render_full(build_ruleset(state()), "t")
    lines = script.splitlines()
    assert lines[:2] == ["add table inet t", "delete table inet t"]   # atomic replacement
    assert "  set p-" in script and "elements = { 10.0.1.0/24, 10.0.2.7 }" in script
    assert "add rule inet t in-10-0-0-2 ip saddr @p-" in script
    assert any(line.endswith("meta l4proto sctp th dport { 90-100 } accept") for line in lines)
    assert any(line.endswith("meta l4proto udp accept") for line in lines)
    assert any("ip daddr . meta l4proto . th dport @n-" in line and line.endswith(" return") for line in lines)
    assert "add element inet t ingress { 10.0.0.2 : jump in-10-0-0-2 }" in lines
    assert not any("10-0-0-3" in line for line in lines)              # b is not isolated
    assert lines[-4:] == ["add rule inet t forward ct state established,related accept",
                          "add rule inet t forward ip saddr vmap @egress",
                          "add rule inet t forward ip saddr @node_ips accept",
                          "add rule inet t forward ip daddr vmap @ingress"]


def test_a_peer_change_is_set_elements_only():
    old, new = state(), state(RulePeers("abc", "ingress", cidrs=("10.0.1.0/24", "10.0.2.8/32")))
    before = build_ruleset(old)
    script = render_diff(before, build_ruleset(new, (old, before)), "t")
    lines = script.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("delete element inet t p-") and lines[0].endswith("{ 10.0.2.7 }")
    assert lines[1].startswith("add element inet t p-") and lines[1].endswith("{ 10.0.2.8 }")
    assert render_diff(before, build_ruleset(old, (old, before)), "t") == ""


def test_a_pod_leaving_isolation_drops_its_map_entry_then_its_chain():
    old = state()
    pods = dict(old.pods)
    pods["10.0.0.2"] = PodPolicy("10.0.0.2", "x", "a")
    new = PolicyState("n1", 2, pods, {}, old.node_ips)
    script = render_diff(build_ruleset(old), build_ruleset(new), "t").splitlines()
    assert script.index("delete element inet t ingress { 10.0.0.2 }") < script.index("delete chain inet t in-10-0-0-2")
    assert script[-1].startswith("delete set inet t ")
