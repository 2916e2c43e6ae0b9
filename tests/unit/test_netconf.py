"""net-conf.json parsing and validation: flannel's ParseConfig + CheckNetworkConfig."""
import ipaddress
import json
import os

import pytest

from examples import FLANNEL_EXAMPLES as EXAMPLES

from flannel_ext._util.errors import ConfigError
from flannel_ext._config.netconf import load_netconf, parse_netconf

EXT = {"Type": "extension"}


def conf(**top):
    """A net-conf.json text: an extension backend plus the given top-level keys."""
    top.setdefault("Backend", EXT)
    return json.dumps(top)


def error(text, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_netconf(text, "cfg.json", **kwargs)
    exc = info.value
    assert exc.exit_code == 2
    assert str(exc).startswith("cfg.json: ")
    return exc


# --- parsing ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["extension-hostgw.json", "extension-vxlan.json"])
def test_shared_flannel_examples_parse(name):
    c = load_netconf(EXAMPLES / name)
    assert c.backend_type == "extension"
    assert c.network == ipaddress.ip_network("10.50.0.0/16")
    assert c.subnet_len == 24
    assert c.commands["SubnetAddCommand"].startswith(("ip route add", "export SUBNET_IP"))
    assert c.source == str(EXAMPLES / name)


def test_vxlan_example_keeps_every_command_including_shutdown():
    c = load_netconf(EXAMPLES / "extension-vxlan.json")
    assert set(c.commands) == {"PreStartupCommand", "PostStartupCommand", "SubnetAddCommand", "ShutdownCommand"}


def test_keys_are_case_insensitive_and_unknown_keys_ignored():
    c = parse_netconf('{"nEtWoRk": "10.1.0.0/16", "subnetlen": 26, "Whatever": [1],'
                      ' "backend": {"TYPE": "ExTension", "subnetaddcommand": "/bin/true", "hook": "vxlan"}}')
    assert c.network == ipaddress.ip_network("10.1.0.0/16")
    assert c.subnet_len == 26
    assert c.backend_type == "extension"
    assert c.commands == {"SubnetAddCommand": "/bin/true"}
    assert c.hook == "vxlan"
    assert c.backend_option("SubnetAddCommand") == "/bin/true"


def test_case_variant_duplicate_keys_last_one_wins_as_in_go():
    c = parse_netconf('{"Network": "10.1.0.0/16", "network": "10.2.0.0/16", "Backend": {"Type": "extension"}}')
    assert c.network == ipaddress.ip_network("10.2.0.0/16")


def test_cidrs_are_masked():
    c = parse_netconf(conf(Network="10.244.3.7/16"))
    assert str(c.network) == "10.244.0.0/16"
    c = parse_netconf(conf(EnableIPv4=False, EnableIPv6=True, IPv6Network="fd00:1:2:3::5/48"))
    assert str(c.ipv6_network) == "fd00:1:2::/48"


def test_enable_ipv4_defaults_true_and_ipv6_false():
    c = parse_netconf(conf(Network="10.0.0.0/8"))
    assert (c.enable_ipv4, c.enable_ipv6, c.enable_nftables) == (True, False, False)
    assert c.ipv6_network is None


def test_defaults_for_a_slash_16():
    c = parse_netconf(conf(Network="10.7.0.0/16"))
    assert c.subnet_len == 24
    assert str(c.subnet_min) == "10.7.1.0"
    assert str(c.subnet_max) == "10.7.255.0"


def test_defaults_for_a_small_network_split_in_four():
    c = parse_netconf(conf(Network="10.7.0.0/26"))
    assert c.subnet_len == 28
    assert (str(c.subnet_min), str(c.subnet_max)) == ("10.7.0.16", "10.7.0.48")


def test_zero_subnet_min_means_default():
    c = parse_netconf(conf(Network="10.7.0.0/16", SubnetMin="0.0.0.0", SubnetLen=0))
    assert (c.subnet_len, str(c.subnet_min)) == (24, "10.7.1.0")


def test_explicit_bounds_are_kept():
    c = parse_netconf(conf(Network="10.7.0.0/16", SubnetLen=25, SubnetMin="10.7.8.128", SubnetMax="10.7.9.0"))
    assert (c.subnet_len, str(c.subnet_min), str(c.subnet_max)) == (25, "10.7.8.128", "10.7.9.0")


def test_ipv6_defaults():
    c = parse_netconf(conf(EnableIPv6=True, IPv6Network="fd00::/48", Network="10.0.0.0/16"))
    assert c.ipv6_subnet_len == 64
    assert str(c.ipv6_subnet_min) == "fd00:0:0:1::"
    assert str(c.ipv6_subnet_max) == "fd00:0:0:ffff::"
    c = parse_netconf(conf(EnableIPv4=False, EnableIPv6=True, IPv6Network="fd00::/120"))
    assert (c.ipv6_subnet_len, str(c.ipv6_subnet_min), str(c.ipv6_subnet_max)) == (122, "fd00::40", "fd00::c0")


def test_backend_absent_is_udp_and_rejected():
    exc = error(json.dumps({"Network": "10.0.0.0/16"}))
    assert exc.field == "Backend"
    assert "udp" in str(exc) and '"Type": "extension"' in str(exc) and '"Hook": "vxlan"' in str(exc)


@pytest.mark.parametrize("backend", [{}, None, {"Type": None}])
def test_backend_without_type_is_empty_type(backend):
    exc = error(json.dumps({"Network": "10.0.0.0/16", "Backend": backend}))
    assert exc.field == "Backend.Type"
    assert "unknown backend type: " in exc.problem


def test_other_backend_type_is_rejected_with_the_fix():
    exc = error(conf(Network="10.0.0.0/16", Backend={"Type": "VXLAN"}))
    assert (exc.field, exc.value) == ("Backend.Type", "VXLAN")
    assert "flannel-ext runs only the extension backend" in str(exc)
    assert '"Hook": "vxlan" or "host-gw"' in str(exc)


@pytest.mark.parametrize("backend, kind", [("vxlan", "string"), ([1], "array"), (3, "number")])
def test_backend_not_an_object(backend, kind):
    exc = error(json.dumps({"Network": "10.0.0.0/16", "Backend": backend}))
    assert exc.field == "Backend"
    assert f"error decoding Backend property of config: json: cannot unmarshal {kind}" in str(exc)


def test_backend_type_not_a_string():
    exc = error(conf(Network="10.0.0.0/16", Backend={"Type": 1}))
    assert exc.field == "Backend.Type" and "must be a string" in str(exc)


def test_json_syntax_error_has_line_and_column():
    exc = error('{\n  "Network": "10.0.0.0/16",\n  "Backend": {"Type": "extension",}\n}')
    assert "invalid JSON at line 3, column 35" in str(exc)


def test_leading_comment_is_rejected_with_a_hint():
    exc = error("// note\n" + conf(Network="10.0.0.0/16"))
    assert "line 1, column 1" in str(exc) and "remove the comments" in str(exc)


@pytest.mark.parametrize("text", ["[]", "null", '"x"', "3"])
def test_top_level_must_be_an_object(text):
    assert "top level must be a JSON object" in str(error(text))


def test_nan_is_not_json():
    assert "NaN" in str(error('{"Network": "10.0.0.0/16", "SubnetLen": NaN, "Backend": {"Type": "extension"}}'))


# --- top-level field types -------------------------------------------------------------

@pytest.mark.parametrize("value", ["10.0.0.0", "10.0.0.0/33", "fd00::/48", "", None, 10, "10.0.0.0/255.255.0.0"])
def test_network_must_be_an_ipv4_cidr(value):
    exc = error(conf(Network=value))
    assert (exc.field, exc.value) == ("Network", value)
    assert "invalid IPv4 CIDR format" in str(exc) and "10.244.0.0/16" in exc.fix


def test_ipv6_network_must_be_an_ipv6_cidr():
    exc = error(conf(Network="10.0.0.0/16", EnableIPv6=True, IPv6Network="10.1.0.0/16"))
    assert exc.field == "IPv6Network" and "invalid IPv6 CIDR format" in str(exc)


@pytest.mark.parametrize("value", [24.0, -1, "24", True])
def test_subnet_len_must_be_a_whole_number(value):
    exc = error(conf(Network="10.0.0.0/16", SubnetLen=value))
    assert exc.field == "SubnetLen" and "non-negative whole number" in str(exc)


@pytest.mark.parametrize("value", ["10.0.1", "fd00::1", None, 5])
def test_subnet_min_must_be_an_ipv4_address(value):
    exc = error(conf(Network="10.0.0.0/16", SubnetMin=value))
    assert exc.field == "SubnetMin" and "not a valid IPv4 address" in str(exc)


def test_enable_flags_must_be_bools():
    exc = error(conf(Network="10.0.0.0/16", EnableIPv6="true"))
    assert exc.field == "EnableIPv6" and "true or false" in str(exc)


def test_both_families_disabled():
    assert "both EnableIPv4 and EnableIPv6 are false" in str(error(conf(EnableIPv4=False)))


# --- CheckNetworkConfig, IPv4 -------------------------------------------------------

def test_missing_network():
    exc = error(conf())
    assert exc.field == "Network"
    assert "please define a correct Network parameter in the flannel config" in str(exc)


def test_zero_network_counts_as_missing():
    assert "please define a correct Network" in str(error(conf(Network="0.0.0.0/0")))


def test_subnet_len_above_30():
    exc = error(conf(Network="10.0.0.0/16", SubnetLen=31))
    assert (exc.field, exc.value) == ("SubnetLen", 31)
    assert "SubnetLen must be less than /31" in str(exc) and "/30" in exc.fix


def test_subnet_len_too_short_for_four_subnets():
    exc = error(conf(Network="10.0.0.0/16", SubnetLen=17))
    assert "network must be able to accommodate at least four subnets" in str(exc)
    assert "/18" in exc.fix


def test_network_too_small():
    exc = error(conf(Network="10.0.0.0/29"))
    assert exc.field == "Network" and exc.value == "10.0.0.0/29"
    assert "network is too small. Minimum useful network prefix is /28" in str(exc)


@pytest.mark.parametrize("name", ["SubnetMin", "SubnetMax"])
def test_bound_outside_network(name):
    exc = error(conf(Network="10.0.0.0/16", **{name: "10.1.0.0"}))
    assert (exc.field, exc.value) == (name, "10.1.0.0")
    assert f"{name} is not in the range of the Network" in str(exc)


@pytest.mark.parametrize("name", ["SubnetMin", "SubnetMax"])
def test_bound_off_boundary(name):
    exc = error(conf(Network="10.0.0.0/16", **{name: "10.0.3.5"}))
    assert f"{name} is not on a SubnetLen boundary: 10.0.3.5" in str(exc)
    assert "10.0.3.0" in exc.fix


def test_min_above_max():
    exc = error(conf(Network="10.0.0.0/16", SubnetMin="10.0.9.0", SubnetMax="10.0.3.0"))
    assert exc.field == "SubnetMin" and "above SubnetMax" in str(exc)


# --- CheckNetworkConfig, IPv6 -------------------------------------------------------

V6 = {"EnableIPv4": False, "EnableIPv6": True}


def test_missing_ipv6_network():
    exc = error(conf(**V6))
    assert exc.field == "IPv6Network"
    assert "please define a correct IPv6Network parameter in the flannel config" in str(exc)


def test_ipv6_subnet_len_above_126():
    exc = error(conf(IPv6Network="fd00::/48", IPv6SubnetLen=127, **V6))
    assert exc.field == "IPv6SubnetLen" and "SubnetLen must be less than /127" in str(exc)


def test_ipv6_subnet_len_too_short():
    exc = error(conf(IPv6Network="fd00::/48", IPv6SubnetLen=49, **V6))
    assert "network must be able to accommodate at least four subnets" in str(exc)


def test_ipv6_network_too_small():
    exc = error(conf(IPv6Network="fd00::/125", **V6))
    assert "IPv6Network is too small. Minimum useful network prefix is /124" in str(exc)


def test_ipv6_bounds():
    exc = error(conf(IPv6Network="fd00::/48", IPv6SubnetMin="fd01::", **V6))
    assert "IPv6SubnetMin is not in the range of the IPv6Network" in str(exc)
    exc = error(conf(IPv6Network="fd00::/48", IPv6SubnetMax="fd00:0:0:5::1", **V6))
    assert "IPv6SubnetMax is not on a SubnetLen boundary: fd00:0:0:5::1" in str(exc)


def test_ipv6_null_bound_is_unset():
    c = parse_netconf(conf(IPv6Network="fd00::/48", IPv6SubnetMin=None, **V6))
    assert str(c.ipv6_subnet_min) == "fd00:0:0:1::"


# --- kube mode ----------------------------------------------------------------------

def test_kube_mode_skips_subnet_checks_and_defaults():
    c = parse_netconf(conf(Network="10.0.0.0/30", SubnetLen=31), check_subnets=False)
    assert str(c.network) == "10.0.0.0/30"
    assert c.subnet_len == 31 and c.subnet_min is None


def test_kube_mode_still_parses_network_and_backend():
    assert "invalid IPv4 CIDR format" in str(error(conf(Network="bogus"), check_subnets=False))
    exc = error(conf(Network="10.0.0.0/16", Backend={"Type": "host-gw"}), check_subnets=False)
    assert exc.field == "Backend.Type"


# --- extension Backend fields --------------------------------------------------------

@pytest.mark.parametrize("name", ["PreStartupCommand", "PostStartupCommand", "SubnetAddCommand",
                                  "SubnetRemoveCommand", "ShutdownCommand"])
def test_command_must_be_a_string(name):
    exc = error(conf(Network="10.0.0.0/16", Backend={"Type": "extension", name: ["ip", "route"]}))
    assert (exc.field, exc.value) == (f"Backend.{name}", ["ip", "route"])
    assert "error decoding backend config" in str(exc) and "of type string" in str(exc)


def test_whitespace_only_command():
    exc = error(conf(Network="10.0.0.0/16", Backend={"Type": "extension", "SubnetAddCommand": " \t\n"}))
    assert exc.field == "Backend.SubnetAddCommand" and "only whitespace" in str(exc) and "panics" in str(exc)


def test_empty_and_null_commands_are_skipped():
    c = parse_netconf(conf(Network="10.0.0.0/16", Backend={"Type": "extension", "PreStartupCommand": "",
                                                           "PostStartupCommand": None}))
    assert c.commands == {}


@pytest.mark.parametrize("value", [1, "", None])
def test_hook_must_be_a_string(value):
    exc = error(conf(Network="10.0.0.0/16", Backend={"Type": "extension", "Hook": value}))
    assert exc.field == "Backend.Hook" and '"Hook": "vxlan"' in exc.fix


@pytest.mark.parametrize("value", [67, 65536, "1450", 1450.0, True])
def test_mtu_range_and_type(value):
    exc = error(conf(Network="10.0.0.0/16", Backend={"Type": "extension", "MTU": value}))
    assert exc.field == "Backend.MTU" and "68 to 65535" in str(exc)


def test_mtu_bounds_accepted():
    for mtu in (68, 65535):
        assert parse_netconf(conf(Network="10.0.0.0/16", Backend={"Type": "extension", "MTU": mtu})).mtu == mtu


# --- files --------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_netconf(tmp_path / "nope.json")
    assert str(info.value).startswith(f"{tmp_path / 'nope.json'}: file not found")


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_netconf(tmp_path)   # a directory
    assert "cannot read the file" in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_permission_denied(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(conf(Network="10.0.0.0/16"))
    path.chmod(0)
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_netconf(path)


def test_not_utf8(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(b'{"Network": "\xff"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_netconf(path)


def test_text_is_kept(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(conf(Network="10.0.0.0/16"))
    assert load_netconf(path).text == path.read_text()
