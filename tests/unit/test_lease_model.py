"""Pins flannel's lease JSON and subnet keys byte for byte (pkg/lease/lease.go, subnet.go)."""
import ipaddress

import pytest

from flannel_ext._stores.lease import (EventType, Lease, LeaseAttrs, LeaseEvent, parse_subnet_key,
                                      subnet_key)

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network


@pytest.mark.parametrize("attrs, expected", [
    # PublicIPv6 is always present (null when nil); the rest is omitempty.
    (LeaseAttrs(), '{"PublicIP":"0.0.0.0","PublicIPv6":null}'),
    (LeaseAttrs(public_ip="10.0.0.5"), '{"PublicIP":"10.0.0.5","PublicIPv6":null}'),
    (LeaseAttrs.with_string_data("192.168.1.10", "aa:bb:cc:dd:ee:ff"),
     '{"PublicIP":"192.168.1.10","PublicIPv6":null,"BackendType":"extension",'
     '"BackendData":"aa:bb:cc:dd:ee:ff"}'),
    # Extension with no PreStartup output: BackendData omitted.
    (LeaseAttrs.with_string_data("192.168.1.10", ""),
     '{"PublicIP":"192.168.1.10","PublicIPv6":null,"BackendType":"extension"}'),
    (LeaseAttrs.with_string_data("192.168.1.10", None),
     '{"PublicIP":"192.168.1.10","PublicIPv6":null,"BackendType":"extension"}'),
    # vxlan's object data, compacted with Go's field order kept.
    (LeaseAttrs(public_ip="10.0.0.5", backend_type="vxlan",
                backend_data='{ "VNI": 1, "VtepMAC": "5a:6b:7c:8d:9e:af" }'),
     '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"vxlan",'
     '"BackendData":{"VNI":1,"VtepMAC":"5a:6b:7c:8d:9e:af"}}'),
    # Dual stack: PublicIPv6 set, BackendV6Data last.
    (LeaseAttrs(public_ip="10.0.0.5", public_ipv6="fc00::5", backend_type="vxlan",
                backend_data='{"VNI":1,"VtepMAC":"5a:6b:7c:8d:9e:af"}',
                backend_v6_data='{"VNI":1,"VtepMAC":"5a:6b:7c:8d:9e:b0"}'),
     '{"PublicIP":"10.0.0.5","PublicIPv6":"fc00::5","BackendType":"vxlan",'
     '"BackendData":{"VNI":1,"VtepMAC":"5a:6b:7c:8d:9e:af"},'
     '"BackendV6Data":{"VNI":1,"VtepMAC":"5a:6b:7c:8d:9e:b0"}}'),
    # Go's HTML-safe escaping of < > & and U+2028/U+2029; other non-ASCII stays UTF-8.
    (LeaseAttrs.with_string_data("10.0.0.5", "<a&b>\u2028\u2029é"),
     '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"extension",'
     '"BackendData":"\\u003ca\\u0026b\\u003e\\u2028\\u2029é"}'),
    # A RawMessage "null" is not empty, so Go writes it.
    (LeaseAttrs(public_ip="10.0.0.5", backend_type="extension", backend_data="null"),
     '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"extension","BackendData":null}'),
])
def test_value_json_is_flannels_bytes(attrs, expected):
    assert attrs.to_json() == expected
    assert attrs.to_json().encode() == expected.encode()


def test_value_from_flannel_round_trips_byte_for_byte():
    text = ('{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"vxlan",'
            '"BackendData":{"VNI":1,"VtepMAC":"5a:6b:7c:8d:9e:af"}}')
    attrs = LeaseAttrs.from_json(text)
    assert attrs.backend_data_value() == {"VNI": 1, "VtepMAC": "5a:6b:7c:8d:9e:af"}
    assert attrs.to_json() == text


def test_value_parsing_is_gos_case_insensitive_and_ignores_unknown_keys():
    attrs = LeaseAttrs.from_json('{"publicip":"10.0.0.7","BACKENDTYPE":"extension",'
                                 '"backenddata":"x","Extra":42}')
    assert attrs == LeaseAttrs.with_string_data("10.0.0.7", "x")


@pytest.mark.parametrize("text", ["", "{", "[]", '"x"', '{"PublicIP":5}', b"\xff\xfe"])
def test_bad_values_raise_value_error(text):
    with pytest.raises(ValueError):
        LeaseAttrs.from_json(text)


@pytest.mark.parametrize("subnet, ipv6, key", [
    (V4("10.5.1.0/24"), None, "10.5.1.0-24"),
    (V4("10.244.128.0/17"), None, "10.244.128.0-17"),
    (V4("10.5.1.0/24"), V6("fc00:0:0:1::/64"), "10.5.1.0-24&fc00:0:0:1::-64"),
    (None, V6("fc00:0:0:2::/64"), "0.0.0.0-0&fc00:0:0:2::-64"),
])
def test_subnet_keys(subnet, ipv6, key):
    assert subnet_key(subnet, ipv6) == key
    lease = Lease(subnet, ipv6_subnet=ipv6)
    assert lease.key == key
    v4, v6 = parse_subnet_key(key)
    assert v4 == (subnet or V4("0.0.0.0/0")) and v6 == ipv6


@pytest.mark.parametrize("key", [
    "", "10.5.1.0/24", "10.5.1.0-24 ", " 10.5.1.0-24", "x10.5.1.0-24", "10.5.1.0-24x",
    "10.5.1.0-33", "10.5.1.300-24", "10.5.1-24", "10.5.1.1-24",  # host bits set
    "10.5.1.0-24&FC00::-64",  # flannel's regex only knows lower-case hex
    "10.5.1.0-24&fc00::-", "10.5.1.0-24&fc00::-129", "10.5.1.0-24&", "config",
    "10.5.1.0-24&fc00::1-64",
    "10.5.1.0-24\n", "10.5.1.0-24&fc00:0:0:2::-64\n",   # Python's `$` would match before the newline
    "١٠.٥.١.٠-٢٤",                                          # `\d` is ASCII only, as in Go
])
def test_malformed_keys_are_rejected(key):
    with pytest.raises(ValueError, match="malformed subnet key"):
        parse_subnet_key(key)


@pytest.mark.parametrize("key", ["10.5.1.0-024", "10.5.1.0-24&fc00:0:0:2:0:0:0:0-64",
                                 "10.5.1.0-24&fc00:0::2:0:0:0:0-64"])
def test_only_the_canonical_spelling_is_a_key(key):
    # Another spelling of the same subnets would alias the real key (and its deletion).
    with pytest.raises(ValueError, match="canonical"):
        parse_subnet_key(key)


def test_duplicate_keys_the_last_match_wins_as_in_go():
    # Go assigns each matching key in order (golang/go#43664): the last one wins, exact or not.
    attrs = LeaseAttrs.from_json('{"PublicIP":"10.0.0.7","publicip":"10.0.0.8","BackendType":"extension"}')
    assert attrs.public_ip == "10.0.0.8"


def test_lease_events():
    lease = Lease(V4("10.5.1.0/24"), LeaseAttrs(public_ip="10.0.0.5"))
    assert LeaseEvent.added(lease) == LeaseEvent(EventType.ADDED, lease, "10.5.1.0-24")
    assert LeaseEvent.removed(lease).type is EventType.REMOVED
    bad = LeaseEvent.rejected("junk", "malformed")
    assert (bad.type, bad.lease, bad.key, bad.reason) == (EventType.REJECTED, None, "junk", "malformed")


def test_same_subnet_compares_both_families():
    a = Lease(V4("10.5.1.0/24"), LeaseAttrs(public_ip="1.1.1.1"), V6("fc00:0:0:1::/64"))
    assert a.same_subnet(Lease(V4("10.5.1.0/24"), LeaseAttrs(public_ip="2.2.2.2"), V6("fc00:0:0:1::/64")))
    assert not a.same_subnet(Lease(V4("10.5.1.0/24")))
