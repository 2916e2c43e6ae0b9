"""flanneld's command line, as pasted: Go flag syntax, FLANNELD_<NAME>, ignored flags, errors.

FLANNELD_FLAGS is flanneld's documented flag list, copied from flannel-io/flannel
Documentation/configuration.md ("Key command line options", commit 0398238e), with the
value each one is documented with; FLANNELD_MAIN_FLAGS adds the rest of main.go's flags
(flannel v0.26, `flannelFlags` plus klog's `-vmodule`/`-log_backtrace_at`).
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from flannel_ext.cli import build_parser, main
from flannel_ext._commands import flags

FLANNELD_FLAGS = [
    ("--public-ip", "10.0.0.5", "public_ip", "10.0.0.5"),
    ("--etcd-endpoints", "http://127.0.0.1:4001", "etcd_endpoints", "http://127.0.0.1:4001"),
    ("--etcd-prefix", "/coreos.com/network", "etcd_prefix", "/coreos.com/network"),
    ("--etcd-keyfile", "/etc/ssl/k.pem", "etcd_keyfile", "/etc/ssl/k.pem"),
    ("--etcd-certfile", "/etc/ssl/c.pem", "etcd_certfile", "/etc/ssl/c.pem"),
    ("--etcd-cafile", "/etc/ssl/ca.pem", "etcd_cafile", "/etc/ssl/ca.pem"),
    ("--kube-subnet-mgr", None, "kube_subnet_mgr", True),
    ("--iface", "eth0", "iface", ["eth0"]),
    ("--iface-regex", "^en", "iface_regex", ["^en"]),
    ("--iptables-resync", "5", None, None),
    ("--subnet-file", "/run/flannel/subnet.env", "subnet_file", "/run/flannel/subnet.env"),
    ("--net-config-path", "/etc/kube-flannel/net-conf.json", "net_conf", "/etc/kube-flannel/net-conf.json"),
    ("--subnet-lease-renew-margin", "60", "subnet_lease_renew_margin", 60),
    ("--ip-masq", None, "ip_masq", True),
    ("-v", "1", "verbosity", 1),
    ("--healthz-ip", "0.0.0.0", "healthz_ip", "0.0.0.0"),
    ("--healthz-port", "8081", "healthz_port", 8081),
]
FLANNELD_MAIN_FLAGS = [
    ("--etcd-username", "root", "etcd_username", "root"),
    ("--etcd-password", "secret", "etcd_password", "secret"),
    ("--iface-can-reach", "192.0.2.1", "iface_can_reach", "192.0.2.1"),
    ("--public-ipv6", "fd00::5", "public_ipv6", "fd00::5"),
    ("--ip-masq-fully-random-disable", None, "ip_masq_fully_random_disable", True),
    ("--kube-api-url", "https://10.0.0.1:6443", "kube_api_url", "https://10.0.0.1:6443"),
    ("--kube-annotation-prefix", "example.com", "kube_annotation_prefix", "example.com"),
    ("--kubeconfig-file", "/root/.kube/config", "kubeconfig_file", "/root/.kube/config"),
    ("--iptables-forward-rules", None, None, None),
    ("--ip-blackhole-route", None, None, None),
    ("--set-node-network-unavailable", "false", "set_node_network_unavailable", False),
    ("--vmodule", "main=2", None, None),
    ("--log_backtrace_at", "main.go:1", None, None),
]
ALL_FLAGS = FLANNELD_FLAGS + FLANNELD_MAIN_FLAGS


def parse(argv, monkeypatch=None, env=None):
    if monkeypatch is not None:
        for name in [n for n in __import__("os").environ if n.startswith("FLANNELD_")]:
            monkeypatch.delenv(name)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
    return build_parser().parse_args(["run", *argv])


def spellings(flag, value):
    """Every way Go's flag package (and argparse) accepts a flag."""
    name = flag.lstrip("-")
    if value is None:          # a boolean: bare, or =true
        return [[f"-{name}"], [f"--{name}"], [f"-{name}=true"], [f"--{name}=true"]]
    return [[f"-{name}", value], [f"-{name}={value}"], [f"--{name}", value], [f"--{name}={value}"]]


@pytest.mark.parametrize("flag,value,dest,expected", ALL_FLAGS, ids=[f[0] for f in ALL_FLAGS])
def test_every_flanneld_flag_in_every_syntax(flag, value, dest, expected, monkeypatch, capsys):
    for argv in spellings(flag, value):
        args = parse(argv, monkeypatch)
        err = capsys.readouterr().err
        if dest is None:   # flanneld-only: one warning, nothing set
            assert err.count("warning:") == 1 and "is ignored" in err, (argv, err)
        else:
            assert getattr(args, dest) == expected, argv
            assert err == ""


@pytest.mark.parametrize("flag,value,dest,expected", ALL_FLAGS, ids=[f[0] for f in ALL_FLAGS])
def test_every_flanneld_flag_from_its_environment_variable(flag, value, dest, expected, monkeypatch, capsys):
    args = parse([], monkeypatch, {flags.env_name(flag): value or "true"})
    err = capsys.readouterr().err
    if dest is None:
        assert err.count("warning:") == 1
    else:
        assert getattr(args, dest) == expected


def test_each_name_of_a_flag_reads_its_own_variable(monkeypatch):
    assert parse([], monkeypatch, {"FLANNELD_NET_CONFIG_PATH": "/a.json"}).net_conf == "/a.json"
    assert parse([], monkeypatch, {"FLANNELD_NET_CONF": "/b.json"}).net_conf == "/b.json"


def test_command_line_wins_and_empty_variables_are_ignored(monkeypatch):
    env = {"FLANNELD_PUBLIC_IP": "10.1.2.3", "FLANNELD_HOOK_TIMEOUT": "", "FLANNELD_IFACE": "eth9"}
    args = parse(["-public-ip", "10.9.9.9", "--iface=eth0"], monkeypatch, env)
    assert (args.public_ip, args.hook_timeout, args.iface) == ("10.9.9.9", 30.0, ["eth0"])
    # the same flag under its other name counts as given
    args = parse(["--net-conf", "/x.json"], monkeypatch, {"FLANNELD_NET_CONFIG_PATH": "/y.json"})
    assert args.net_conf == "/x.json"


def test_repeated_iface_keeps_priority_order_and_env_takes_a_comma_list(monkeypatch):
    assert parse(["-iface", "eth1", "--iface=10.0.0.2", "--iface", "eth0"], monkeypatch).iface == \
        ["eth1", "10.0.0.2", "eth0"]
    assert parse([], monkeypatch, {"FLANNELD_IFACE": "eth1,eth0"}).iface == ["eth1", "eth0"]


def test_go_booleans(monkeypatch):
    for text, value in (("true", True), ("1", True), ("T", True), ("false", False), ("0", False),
                        ("FALSE", False)):
        assert parse([f"--ip-masq={text}"], monkeypatch).ip_masq is value
        assert parse([], monkeypatch, {"FLANNELD_IP_MASQ": text}).ip_masq is value
    assert parse([], monkeypatch).set_node_network_unavailable is True
    assert parse(["-set-node-network-unavailable=false"], monkeypatch).set_node_network_unavailable is False


def test_v_sets_debug_unless_log_level_says_otherwise(monkeypatch):
    assert parse(["-v", "2"], monkeypatch).verbosity == 2
    assert parse(["-v=0"], monkeypatch).verbosity == 0
    assert parse([], monkeypatch, {"FLANNELD_V": "3"}).verbosity == 3
    assert parse(["--log-level", "warning"], monkeypatch).log_level == "WARNING"


def test_ignored_flag_warns_once_however_often_given(monkeypatch, capsys):
    parse(["--iptables-resync", "5", "-iptables-resync=7"], monkeypatch)
    assert capsys.readouterr().err.count("--iptables-resync is ignored") == 1


BAD_VALUES = [
    (["--log-level", "foo"], "argument --log-level: invalid value 'foo': use one of DEBUG, INFO, WARNING, ERROR"),
    (["--log-format=xml"], "argument --log-format: invalid value 'xml': use one of text, json"),
    (["--hook-timeout", "0"], "argument --hook-timeout: invalid value '0': must be a number of seconds > 0"),
    (["-subnet-lease-renew-margin=1440"],
     "argument --subnet-lease-renew-margin: invalid value '1440': must be an integer of minutes from 1 to 1439"),
    (["--healthz-port", "http"], "argument --healthz-port: invalid value 'http': must be an integer from 0 to 65535"),
    (["--ip-masq=yes"], "argument --ip-masq: invalid boolean 'yes': use true or false"),
    (["-v", "x"], "argument -v: invalid value 'x': must be an integer >= 0"),
    (["-no-such-flag"], "unrecognized arguments: -no-such-flag"),
]


@pytest.mark.parametrize("argv,message", BAD_VALUES, ids=[a[0] for a, _ in BAD_VALUES])
def test_bad_values_give_one_line_with_runs_usage(argv, message, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(argv, monkeypatch)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["usage: flannel-ext run [FLAG ...]  (see: flannel-ext run -h)",
                     f"flannel-ext run: error: {message}"]


def test_bad_environment_value_names_the_variable(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        parse([], monkeypatch, {"FLANNELD_LOG_LEVEL": "loud"})
    assert capsys.readouterr().err.splitlines()[-1] == (
        "flannel-ext run: error: $FLANNELD_LOG_LEVEL (for --log-level): invalid value 'loud': "
        "use one of DEBUG, INFO, WARNING, ERROR")


def test_run_help_is_runs_own():
    proc = subprocess.run([sys.executable, "-m", "flannel_ext", "run", "-h"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: flannel-ext run")
    for flag, *_ in ALL_FLAGS:
        assert flag in proc.stdout, flag


def test_no_traceback_for_a_bad_log_level_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flannel_ext", "run", "--log-level", "foo",
                           "--store", f"sqlite:{tmp_path}/x.db"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--log-level" in proc.stderr and "DEBUG, INFO, WARNING, ERROR" in proc.stderr


def test_env_name():
    assert flags.env_name("--subnet-lease-renew-margin") == "FLANNELD_SUBNET_LEASE_RENEW_MARGIN"
    assert flags.env_name("-v") == "FLANNELD_V"


def test_watch_needs_a_file(capsys):
    assert main(["run", "--watch", "--store", "sqlite:/nonexistent/x.db"]) == 2
    err = capsys.readouterr().err
    assert "--watch" in err and "--net-conf" in err and "Traceback" not in err


def test_other_commands_report_unknown_arguments_with_their_own_usage(capsys):
    with pytest.raises(SystemExit):
        main(["recipes", "--bogus"])
    assert "usage: flannel-ext recipes" in capsys.readouterr().err
