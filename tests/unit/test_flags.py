"""flanneld's convention: a flag not given falls back to FLANNELD_<FLAG>."""
import argparse

from flannel_ext._commands import flags


def parser(environ):
    p = argparse.ArgumentParser()
    p.add_argument("--public-ip")
    p.add_argument("--hook-timeout", type=float, default=30.0)
    p.add_argument("--ip-masq", action="store_true")
    flags.apply_env_defaults(p, environ)
    return p


def test_env_fills_missing_flags():
    args = parser({"FLANNELD_PUBLIC_IP": "10.1.2.3", "FLANNELD_HOOK_TIMEOUT": "5",
                   "FLANNELD_IP_MASQ": "true"}).parse_args([])
    assert (args.public_ip, args.hook_timeout, args.ip_masq) == ("10.1.2.3", 5.0, True)


def test_command_line_wins_and_empty_is_ignored():
    args = parser({"FLANNELD_PUBLIC_IP": "10.1.2.3", "FLANNELD_HOOK_TIMEOUT": ""}).parse_args(
        ["--public-ip", "10.9.9.9"])
    assert (args.public_ip, args.hook_timeout) == ("10.9.9.9", 30.0)


def test_env_name():
    assert flags.env_name("--subnet-lease-renew-margin") == "FLANNELD_SUBNET_LEASE_RENEW_MARGIN"


def test_watch_needs_a_file(capsys):
    from flannel_ext.cli import main
    assert main(["run", "--watch", "--store", "sqlite:/nonexistent/x.db"]) == 2
    err = capsys.readouterr().err
    assert "--watch" in err and "--net-conf" in err and "Traceback" not in err
