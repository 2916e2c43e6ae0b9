"""Loading Python hooks: the three spec forms, load-time validation, the example hooks."""
from __future__ import annotations

import ipaddress
import json
import re
import logging
import textwrap
from pathlib import Path

import pytest

from flannel_ext import Hook, HookContext, HookLoadError, RemoteLease
from flannel_ext._config.netconf import parse_netconf
from flannel_ext._hooks import loader
from flannel_ext._hooks.loader import load_hook, load_hook_file_paths, load_python_hook

REPO = Path(__file__).resolve().parents[2]


def write_hook(tmp_path: Path, body: str, name: str = "myhook.py") -> Path:
    path = tmp_path / name
    path.write_text("from flannel_ext import Hook\n\n" + textwrap.dedent(body))
    return path


def load_error(spec: str, source: str, options: dict | None = None) -> str:
    with pytest.raises(HookLoadError) as info:
        load_python_hook(spec, options or {}, source=source)
    message = str(info.value)
    assert "\n" not in message and f"Backend.Hook {spec!r}" in message
    assert info.value.exit_code == 2
    return message


# --- the three forms --------------------------------------------------------------------
def test_recipe_names_load_the_shipped_classes():
    from flannel_ext.recipes.hostgw import HostGwHook
    from flannel_ext.recipes.vxlan import VxlanHook
    assert type(load_python_hook("host-gw", {})) is HostGwHook
    hook = load_python_hook("vxlan", {"Type": "extension", "Hook": "vxlan", "vni": 4})
    assert type(hook) is VxlanHook and hook.device == "flannel.4" and hook.options["vni"] == 4


def test_module_form():
    hook = load_python_hook("flannel_ext.recipes.vxlan:VxlanHook", {"Port": 4789})
    assert hook.port == 4789


def test_file_form_is_relative_to_the_net_conf_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    write_hook(tmp_path / "sub", """
        class Mine(Hook):
            description = "mine"
            def subnet_add(self, lease, ctx, extra=None):   # extra optional args are fine
                pass
            def _helper(self):
                pass
            def helper(self):
                pass
    """)
    hook = load_python_hook("sub/myhook.py:Mine", {"X": 1}, source=str(tmp_path / "net-conf.json"))
    assert type(hook).__name__ == "Mine" and hook.options == {"X": 1}


def test_load_hook_from_net_conf_and_the_watch_paths(tmp_path):
    path = write_hook(tmp_path, "class Mine(Hook):\n    pass\n")
    conf = parse_netconf(json.dumps({"Network": "10.5.0.0/16", "Backend": {
        "Type": "extension", "hook": "myhook.py:Mine", "Opt": "v"}}), source=str(tmp_path / "net-conf.json"))
    hook = load_hook(conf)
    assert type(hook).__name__ == "Mine" and hook.options["Opt"] == "v"
    assert load_hook_file_paths(conf) == [path]
    conf.hook = "vxlan"
    assert load_hook_file_paths(conf) == [REPO / "recipes" / "vxlan.py"]
    conf.hook = "flannel_ext.recipes.hostgw:HostGwHook"
    assert load_hook_file_paths(conf) == [REPO / "recipes" / "hostgw.py"]
    conf.hook = None
    assert load_hook_file_paths(conf) == []


def test_a_file_hook_is_reimported_on_each_load(tmp_path):
    path = write_hook(tmp_path, 'class Mine(Hook):\n    description = "one"\n')
    source = str(tmp_path / "net-conf.json")
    assert load_python_hook("myhook.py:Mine", {}, source=source).description == "one"
    path.write_text(path.read_text().replace('"one"', '"two"'))
    assert load_python_hook("myhook.py:Mine", {}, source=source).description == "two"


def test_third_party_recipes_come_from_entry_points(monkeypatch):
    monkeypatch.setattr(loader, "installed_recipes",
                        lambda: {"mine": "flannel_ext.recipes.hostgw:HostGwHook"})
    assert type(load_python_hook("mine", {})).__name__ == "HostGwHook"


# --- load-time errors -------------------------------------------------------------------
def test_unknown_recipe(tmp_path):
    msg = load_error("vxlam", "/etc/net-conf.json")
    assert msg.startswith("/etc/net-conf.json: Backend.Hook 'vxlam': no such recipe; did you mean 'vxlan'?")
    assert "host-gw, vxlan" in msg


def test_import_errors(tmp_path):
    source = str(tmp_path / "net-conf.json")
    assert "cannot import no_such_pkg.mod: ModuleNotFoundError" in load_error("no_such_pkg.mod:X", source)
    assert "file " in load_error("missing.py:X", source) and "not found" in load_error("missing.py:X", source)
    write_hook(tmp_path, "class Broken(Hook)\n", name="broken.py")
    assert "importing" in load_error("broken.py:Broken", source) and "SyntaxError" in \
        load_error("broken.py:Broken", source)
    assert "has no attribute 'Nope'" in load_error("flannel_ext.recipes.vxlan:Nope", source)


def test_not_a_hook_subclass(tmp_path):
    write_hook(tmp_path, "class Plain:\n    def subnet_add(self, lease, ctx): pass\n")
    msg = load_error("myhook.py:Plain", str(tmp_path / "n.json"))
    assert "is not a subclass of flannel_ext.Hook; declare it as `class MyHook(flannel_ext.Hook):`" in msg
    assert "not a subclass" in load_error("flannel_ext:Hook", str(tmp_path / "n.json"))


@pytest.mark.parametrize("name, hint", [
    ("subnet_added", "rename it to 'subnet_add'"),
    ("subnet_remove_btach", "rename it to 'subnet_remove_batch'"),
    ("on_shutdown", "rename it to 'shutdown'"),
    ("pre_start", "rename it to 'pre_startup'"),
    ("post_configure", "hook methods are pre_startup, post_startup"),
    ("pre_flight_check", "prefix helpers with '_'"),
])
def test_a_misspelt_hook_method_is_refused(tmp_path, name, hint):
    write_hook(tmp_path, f"class Typo(Hook):\n    def {name}(self, lease, ctx): pass\n")
    msg = load_error("myhook.py:Typo", str(tmp_path / "n.json"))
    assert f"Typo.{name} is not a hook method; " in msg and hint in msg


@pytest.mark.parametrize("definition, shown", [
    ("def subnet_add(self, lease): pass", "Bad.subnet_add(self, lease) has the wrong signature"),
    ("def post_startup(self, ctx, more): pass", "Bad.post_startup(self, ctx, more)"),
    ("def pre_startup(self): pass", "the runtime calls `def pre_startup(self, ctx)"),
    ("@staticmethod\n    def shutdown(): pass", "Bad.shutdown() has the wrong signature"),
    ("async def subnet_remove(self, lease, ctx): pass", "Bad.subnet_remove is async"),
])
def test_a_wrong_signature_is_refused(tmp_path, definition, shown):
    write_hook(tmp_path, f"class Bad(Hook):\n    {definition}\n")
    assert shown in load_error("myhook.py:Bad", str(tmp_path / "n.json"))


def test_a_failing_constructor_is_a_load_error():
    msg = load_error("vxlan", "n.json", {"VNI": 1 << 24})
    assert "VxlanHook(options) failed: ValueError: VNI must be between 1 and 16777215, got 16777216" in msg


# --- vxlan backend data (pure parsing, no kernel) ---------------------------------------
@pytest.mark.parametrize("data, raw, expected", [
    ("AA:bb:cc:dd:ee:01", None, "aa:bb:cc:dd:ee:01"),
    ("", '"aa:bb:cc:dd:ee:02"', "aa:bb:cc:dd:ee:02"),
    ("", '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:03"}', "aa:bb:cc:dd:ee:03"),
    ("", '{"vni":1,"vtepmac":"aa:bb:cc:dd:ee:04"}', "aa:bb:cc:dd:ee:04"),
])
def test_vxlan_parses_mac_and_flannel_json(data, raw, expected):
    hook = load_python_hook("vxlan", {})
    lease = RemoteLease(subnet=ipaddress.IPv4Network("10.5.1.0/24"), public_ip="192.168.1.2",
                        backend_data=data, backend_data_raw=raw)
    assert hook.parse_backend_data(lease) == expected
    assert "vxlan" in hook.accepts_backend_types


@pytest.mark.parametrize("data, raw, problem", [
    ("01:00:00:00:00:01", None, "not a unicast VTEP MAC"),
    ("$(touch /x)", None, "not a unicast VTEP MAC"),
    ("", "null", "not a unicast VTEP MAC"),
    ("", '{"VNI":2,"VtepMAC":"aa:bb:cc:dd:ee:03"}', "remote VNI 2 differs from ours (1)"),
])
def test_vxlan_rejects_bad_backend_data(data, raw, problem):
    lease = RemoteLease(subnet=ipaddress.IPv4Network("10.5.1.0/24"), public_ip="192.168.1.2",
                        backend_data=data, backend_data_raw=raw)
    with pytest.raises(ValueError, match=re.escape(problem)):
        load_python_hook("vxlan", {}).parse_backend_data(lease)


def test_vxlan_mtu_follows_the_interface_or_the_option():
    ctx = HookContext(network=None, options={}, log=logging.getLogger("t"), state_dir=Path("."),
                      iface=None, iface_mtu=9000)
    assert load_python_hook("vxlan", {}).mtu(ctx) == 8950
    assert load_python_hook("vxlan", {"MTU": 1500}).mtu(ctx) == 1450


# --- the example hooks in hooks/ --------------------------------------------------------
def _ctx(tmp_path: Path, **options) -> HookContext:
    return HookContext(network=ipaddress.IPv4Network("10.50.0.0/16"), options=options,
                       log=logging.getLogger("test"), state_dir=tmp_path,
                       subnet=ipaddress.IPv4Network("10.50.1.0/24"), public_ip="192.168.1.1", iface="eth0")


def _leases() -> list[RemoteLease]:
    return [RemoteLease(subnet=ipaddress.IPv4Network(f"10.50.{i}.0/24"), public_ip=f"192.168.1.{i}",
                        backend_data=f"data{i}", key=f"10.50.{i}.0-24") for i in (2, 3)]


def test_template_hook_loads_and_every_method_runs(tmp_path, caplog):
    hook = load_python_hook("hooks/template.py:TemplateHook", {"Greeting": "hey"},
                            source=str(REPO / "net-conf.json"))
    ctx = _ctx(tmp_path)
    caplog.set_level(logging.INFO, logger="test")
    assert hook.pre_startup(ctx) is None
    hook.post_startup(ctx)
    hook.subnet_add_batch(_leases(), ctx)
    hook.subnet_remove(_leases()[0], ctx)
    hook.shutdown(ctx)
    assert hook.parse_backend_data(_leases()[0]) == "data2" and hook.mtu(ctx) is None
    assert "hey: pre_startup on eth0 (192.168.1.1)" in caplog.text
    assert "subnet_add 10.50.3.0/24 via 192.168.1.3" in caplog.text


def test_event_log_hook_appends_json_lines(tmp_path):
    hook = load_python_hook("hooks/event_log.py:EventLogHook", {}, source=str(REPO / "net-conf.json"))
    ctx = _ctx(tmp_path)
    hook.pre_startup(ctx)
    hook.post_startup(ctx)
    hook.subnet_add_batch(_leases(), ctx)
    hook.subnet_remove(_leases()[1], ctx)
    hook.shutdown(ctx)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["pre_startup", "post_startup", "subnet_add", "subnet_add",
                                            "subnet_remove", "shutdown"]
    assert events[1]["subnet"] == "10.50.1.0/24"
    assert {k: events[4][k] for k in ("subnet", "public_ip", "key", "backend_data")} == {
        "subnet": "10.50.3.0/24", "public_ip": "192.168.1.3", "key": "10.50.3.0-24", "backend_data": "data3"}
    # The Path option moves the log.
    other = tmp_path / "x" / "log.jsonl"
    hook.shutdown(_ctx(tmp_path, Path=str(other)))
    assert json.loads(other.read_text())["event"] == "shutdown"


def test_shipped_classes_pass_validation():
    for cls in (loader.load_hook_class("host-gw"), loader.load_hook_class("vxlan")):
        assert issubclass(cls, Hook) and cls.description


def test_recipes_command_lists_python_and_shell_recipes(capsys):
    from flannel_ext.cli import main
    assert main(["recipes", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(r["name"], r["form"]) for r in rows} == {("host-gw", "python"), ("vxlan", "python"),
                                                      ("host-gw", "shell"), ("vxlan", "shell")}
    assert all(r["description"] and not r["description"].startswith("(") for r in rows)
    assert main(["recipes"]) == 0
    assert "vxlan    python  VXLAN overlay like flannel's native vxlan" in capsys.readouterr().out


def test_shell_recipes_parse_as_net_conf():
    from flannel_ext._config.netconf import load_netconf
    for name in ("host-gw.json", "vxlan.json"):
        conf = load_netconf(str(REPO / "recipes" / name))
        assert conf.backend_type == "extension" and conf.backend_option("SubnetAddCommand")
    assert load_netconf(str(REPO / "recipes" / "vxlan.json")).backend_option("MTU") == 1450
