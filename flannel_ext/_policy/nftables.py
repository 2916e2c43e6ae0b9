"""The `nftables` policy hook: one `inet` table per node, sets for peers, one chain per pod.

Layout of table ``inet flannel-ext-policy`` (in the node's network namespace)::

    chain forward   hook forward, policy accept
        ct state established,related accept       # replies always pass
        ip saddr vmap @egress                     # egress-isolated pod → its out-<ip> chain
        ip saddr @node_ips accept                 # the node itself is never blocked
        ip daddr vmap @ingress                    # ingress-isolated pod → its in-<ip> chain
    chain in-10-244-1-5                           # one per isolated pod and direction
        ip saddr @p-<rule> meta l4proto tcp th dport { 80, 8000-8080 } accept
        counter drop
    set p-<rule>                                  # one interval set per policy rule: the
                                                  # peers' IPs and ipBlocks (except cut out)
    set n-<rule>                                  # egress named ports: ip . proto . port

A packet is looked up in two verdict maps and only walks the rules of the policies that
select its own pods, so the cost of a new connection does not grow with the number of
policies. Bridged traffic between pods on the same node reaches the `forward` hook through
br_netfilter (`net.bridge.bridge-nf-call-iptables=1` in the node's namespace, set by the
agent).

Every change is one `nft -f` transaction: `apply` replaces the whole table atomically
(safe after a restart: the old table enforces until the new one is in); `update` sends
only the difference (set elements, the chains of pods whose policies changed, map entries).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field

from flannel_ext._policy.hook import PolicyHook
from flannel_ext._policy.state import EGRESS, INGRESS, PodPolicy, PolicyState, RulePeers
from flannel_ext._util.errors import CommandError, FlannelExtError

TABLE = "flannel-ext-policy"
_PEERS_TYPE = "type ipv4_addr; flags interval;"
_NAMED_TYPE = "type ipv4_addr . inet_proto . inet_service;"


@dataclass
class Ruleset:
    """The table's variable content, comparable between two states."""

    sets: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)   # name → (type, elements)
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)           # name → rules
    maps: dict[str, dict[str, str]] = field(default_factory=lambda: {INGRESS: {}, EGRESS: {}})


def _is_v4(text: str) -> bool:
    return ":" not in text


def _digest(rule_id: str) -> str:
    return hashlib.sha1(rule_id.encode()).hexdigest()[:16]


def _element(cidr: str) -> str:
    return cidr.removesuffix("/32")


def _chain_name(direction: str, ip: str) -> str:
    return ("in-" if direction == INGRESS else "out-") + ip.replace(".", "-")


def _chain_rules(pod: PodPolicy, direction: str, rules: dict[str, RulePeers]) -> tuple[str, ...]:
    peer = "saddr" if direction == INGRESS else "daddr"
    verdict = "accept" if direction == INGRESS else "return"   # egress falls through to ingress
    out: list[str] = []
    for allow in pod.allows(direction) or ():
        rule = rules[allow.rule]
        match = "" if rule.any else f"ip {peer} @p-{_digest(rule.id)} "
        if allow.ports is None:
            out.append(f"{match}{verdict}")
        else:
            by_proto: dict[str, list[str]] = {}
            for rng in allow.ports:
                ports = by_proto.setdefault(rng.protocol.lower(), [])
                if rng.first is None:
                    ports.append("*")
                else:
                    ports.append(str(rng.first) if rng.last in (None, rng.first) else f"{rng.first}-{rng.last}")
            for proto, ports in by_proto.items():
                if "*" in ports:
                    out.append(f"{match}meta l4proto {proto} {verdict}")
                else:
                    out.append(f"{match}meta l4proto {proto} th dport {{ {', '.join(sorted(set(ports)))} }} {verdict}")
        if rule.named:
            out.append(f"ip daddr . meta l4proto . th dport @n-{_digest(rule.id)} {verdict}")
    out.append("counter drop")
    return tuple(dict.fromkeys(out))


def build_ruleset(state: PolicyState, previous: tuple[PolicyState, Ruleset] | None = None) -> Ruleset:
    """The sets, chains and map entries that enforce `state` (IPv4 pods).

    With `previous` (a state and the ruleset built for it), the chains of unchanged pods and
    the sets of unchanged peers are reused instead of rendered again: a label change then
    costs what it changes, not the size of the cluster."""
    old_state, old_rs = previous if previous else (None, None)
    reshaped = set(state.rules) if old_state is None else {
        rid for rid, rule in state.rules.items()
        if (old := old_state.rules.get(rid)) is None or (old.any, bool(old.named)) != (rule.any, bool(rule.named))}
    rs = Ruleset()
    rs.sets["node_ips"] = ("type ipv4_addr;", frozenset(ip for ip in state.node_ips if _is_v4(ip)))
    used: set[str] = set()
    for pod in state.pods.values():
        if not _is_v4(pod.ip):
            continue
        before = old_state.pods.get(pod.ip) if old_state is not None else None
        same = before is not None and (before is pod or before == pod)
        for direction in (INGRESS, EGRESS):
            allows = pod.allows(direction)
            if allows is None:
                continue
            chain = _chain_name(direction, pod.ip)
            kept = old_rs.chains.get(chain) if same and old_rs is not None else None
            if kept is None or any(a.rule in reshaped for a in allows):
                kept = _chain_rules(pod, direction, state.rules)  # type: ignore[arg-type]
            rs.chains[chain] = kept
            rs.maps[direction][pod.ip] = chain
            used.update(a.rule for a in allows)
    for rule_id in used:
        rule = state.rules[rule_id]
        names = ([f"p-{_digest(rule_id)}"] if not rule.any else []) + ([f"n-{_digest(rule_id)}"] if rule.named else [])
        before_rule = old_state.rules.get(rule_id) if old_state is not None else None
        if old_rs is not None and before_rule is not None and (before_rule is rule or before_rule == rule) \
                and all(n in old_rs.sets for n in names):
            rs.sets.update((n, old_rs.sets[n]) for n in names)
            continue
        if not rule.any:
            rs.sets[names[0]] = (_PEERS_TYPE, frozenset(_element(c) for c in rule.cidrs if _is_v4(c)))
        if rule.named:
            rs.sets[names[-1]] = (_NAMED_TYPE, frozenset(
                f"{ip} . {proto.lower()} . {port}" for ip, proto, port in rule.named if _is_v4(ip)))
    return rs


def _elements(items) -> str:
    return "{ " + ", ".join(sorted(items)) + " }"


def render_full(rs: Ruleset, table: str = TABLE) -> str:
    """One transaction that replaces the table with `rs` (creating it if absent)."""
    lines = [f"add table inet {table}", f"delete table inet {table}", f"table inet {table} {{"]
    for name, (kind, elems) in sorted(rs.sets.items()):
        body = f" elements = {_elements(elems)}" if elems else ""
        lines.append(f"  set {name} {{ {kind}{body} }}")
    lines += [f"  map {d} {{ type ipv4_addr : verdict; }}" for d in (INGRESS, EGRESS)]
    lines.append("}")
    for name, rules in sorted(rs.chains.items()):
        lines.append(f"add chain inet {table} {name}")
        lines.extend(f"add rule inet {table} {name} {r}" for r in rules)
    for direction in (INGRESS, EGRESS):   # filled once the chains they jump to exist
        if rs.maps[direction]:
            lines.append(f"add element inet {table} {direction} {_map_elements(rs.maps[direction])}")
    lines += [f"add chain inet {table} forward {{ type filter hook forward priority filter; policy accept; }}",
              f"add rule inet {table} forward ct state established,related accept",
              f"add rule inet {table} forward ip saddr vmap @egress",
              f"add rule inet {table} forward ip saddr @node_ips accept",
              f"add rule inet {table} forward ip daddr vmap @ingress"]
    return "\n".join(lines) + "\n"


def _map_elements(entries: dict[str, str]) -> str:
    return "{ " + ", ".join(f"{ip} : jump {chain}" for ip, chain in sorted(entries.items())) + " }"


def render_diff(old: Ruleset, new: Ruleset, table: str = TABLE) -> str:
    """One transaction that turns the table holding `old` into `new`; "" when equal."""
    t = f"inet {table}"
    lines: list[str] = []
    for name, (kind, elems) in sorted(new.sets.items()):
        before = old.sets.get(name)
        if before is not None and before[1] is elems:
            continue
        if before is None:
            lines.append(f"add set {t} {name} {{ {kind} }}")
            gone, added = frozenset[str](), elems
        else:
            gone, added = before[1] - elems, elems - before[1]
        if gone:
            lines.append(f"delete element {t} {name} {_elements(gone)}")
        if added:
            lines.append(f"add element {t} {name} {_elements(added)}")
    for name, rules in sorted(new.chains.items()):
        before_rules = old.chains.get(name)
        if before_rules is rules or before_rules == rules:
            continue
        lines.append(f"add chain {t} {name}" if before_rules is None else f"flush chain {t} {name}")
        lines.extend(f"add rule {t} {name} {r}" for r in rules)
    for direction in (INGRESS, EGRESS):
        was, now = old.maps[direction], new.maps[direction]
        gone_ips = [ip for ip in was if now.get(ip) != was[ip]]
        added_ips = [ip for ip in now if was.get(ip) != now[ip]]
        if gone_ips:
            lines.append(f"delete element {t} {direction} {_elements(gone_ips)}")
        if added_ips:
            lines.append(f"add element {t} {direction} {_map_elements({ip: now[ip] for ip in added_ips})}")
    for name in sorted(set(old.chains) - set(new.chains)):
        lines.append(f"delete chain {t} {name}")
    for name in sorted(set(old.sets) - set(new.sets)):
        lines.append(f"delete set {t} {name}")
    return "\n".join(lines) + "\n" if lines else ""


def _enable_bridge_netfilter(path: str) -> str:
    """Set the (per-namespace) sysctl to 1, loading br_netfilter if needed; "" or the error."""
    try:
        with open(path, encoding="ascii") as f:
            if f.read().strip() == "1":
                return ""   # already on (on a cluster, the manifest's init container sets it)
    except FileNotFoundError:
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, timeout=30, check=False)
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write("1\n")
    except OSError as exc:
        return str(exc)
    return ""


class LibNftables:
    """libnftables in-process: the same `nft -f` transaction without forking `nft` for each
    update (a fork and exec cost more than the change itself on a busy node)."""

    def __init__(self, soname: str = "libnftables.so.1"):
        lib = ctypes.CDLL(soname)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lib, self._ctx = lib, lib.nft_ctx_new(0)
        if not self._ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def run(self, script: str) -> tuple[int, str]:
        """(exit status, error text) of running `script` as one transaction."""
        with self._lock:
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            error = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        return rc, error.decode(errors="replace")


class NftablesPolicy(PolicyHook):
    """Enforce a PolicyState with nftables (see the module docstring for the layout)."""

    def __init__(self, table: str = TABLE, netns: str | None = None, nft: str = "nft"):
        if shutil.which(nft) is None:
            raise FlannelExtError(f"{nft!r} not found on PATH; install nftables (apt-get install nftables)")
        self.table, self.netns, self.nft = table, netns, nft
        self.lib: LibNftables | None = None
        if netns is None and os.environ.get("FLANNEL_EXT_NFT_BINARY") != "1":
            try:   # in our own namespace: no fork per update
                self.lib = LibNftables()
            except OSError as exc:
                self.log.info("libnftables not usable (%s); running %s per update", exc, nft)
        self.applied: Ruleset | None = None
        self.state: PolicyState | None = None   # the state `applied` enforces
        self.last_script = ""
        self._bridged = False

    def run_nft(self, script: str) -> None:
        """Run `script` as one `nft -f` transaction; CommandError when the kernel refuses it."""
        argv = [self.nft, "-f", "-"]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.last_script = script
        if self.lib is not None:
            rc, error = self.lib.run(script)
            if rc != 0:
                raise CommandError(["libnftables", "-f", "-"], rc, "", stderr=error, hook="nftables")
            return
        proc = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise CommandError(argv, proc.returncode, proc.stdout, stderr=proc.stderr, hook="nftables")

    def ensure_bridge_netfilter(self) -> None:
        """Make bridged pod-to-pod traffic on cni0 pass the inet forward hook (br_netfilter).

        The sysctl is per network namespace: this changes only the node's own."""
        if self._bridged:
            return
        path = "/proc/sys/net/bridge/bridge-nf-call-iptables"
        if self.netns:   # tests and tools driving another namespace
            argv = ["ip", "netns", "exec", self.netns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]
            error = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stderr.strip()
        else:
            error = _enable_bridge_netfilter(path)
        if error:
            self.log.warning("cannot enable br_netfilter (%s): traffic between pods on the same "
                             "node is not filtered", error)
        self._bridged = True

    def apply(self, state: PolicyState) -> None:
        self.ensure_bridge_netfilter()
        ruleset = build_ruleset(state)
        self.applied, self.state = None, None
        self.run_nft(render_full(ruleset, self.table))
        self.applied, self.state = ruleset, state

    def update(self, old: PolicyState, new: PolicyState) -> None:
        # Diff against what this hook itself last installed, whatever `old` says.
        if self.applied is None or self.state is None:
            self.apply(new)
            return
        ruleset = build_ruleset(new, (self.state, self.applied))
        script = render_diff(self.applied, ruleset, self.table)
        if script:
            self.run_nft(script)
        self.applied, self.state = ruleset, new

    def clear(self) -> None:
        self.applied, self.state = None, None
        self.run_nft(f"add table inet {self.table}\ndelete table inet {self.table}\n")
