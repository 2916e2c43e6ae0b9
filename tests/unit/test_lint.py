"""`flannel-ext lint`: targets (flannel-ext's sh -c, upstream flannel's no-shell exec), the
remove contract, stdin and ConfigMap input, --json, exit codes 0/1/2, and no finding twice."""
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from examples import FLANNEL_EXAMPLES as EXAMPLES

from flannel_ext._commands import lint as lint_module
from flannel_ext._commands.lint import check_command, lint_file
from flannel_ext._commands.manifest import render_manifest
from flannel_ext._hooks import shell
from flannel_ext.cli import main

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, **backend):
    path = tmp_path / "net-conf.json"
    path.write_text(json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "extension", **backend}}))
    return path


def lint(capsys, path, *extra):
    code = main(["lint", str(path), *extra])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def lines_for(lines, path, field, level):
    return [line for line in lines if line.startswith(f"{path}: Backend.{field}: {level}: ")]


def messages(findings, level=None):
    return [f.message for f in findings if level is None or f.level == level]


# --- the shipped recipes, and flannel's own examples -----------------------------------------

@pytest.mark.parametrize("name", ["host-gw.json", "vxlan.json"])
def test_shipped_recipes_lint_clean_for_flannel_ext(name, capsys):
    """They run under flannel-ext (sh -c), which is lint's default target."""
    assert lint(capsys, REPO / "recipes" / name) == (0, [], "")


def test_hostgw_example_is_right_for_a_shell_but_not_portable(capsys):
    path = EXAMPLES / "extension-hostgw.json"
    code, lines, _ = lint(capsys, path)
    # Quoting "$SUBNET" is right under sh -c; only the bare remove is a finding.
    assert code == 1 and [line.split(": warning: ")[0] for line in lines] == [f"{path}: Backend.SubnetRemoveCommand"]
    code, lines, _ = lint(capsys, path, "--target", "flannel")
    assert code == 1
    for field in ("SubnetAddCommand", "SubnetRemoveCommand"):
        warnings = lines_for(lines, path, field, "warning")
        assert any(w.split(": warning: ")[1].startswith("quotes at line 1, column 14 (and 1 more) does not port "
                                                         "to flannel ≥ v0.28.2") for w in warnings), warnings
        assert not any("not double-quoted" in w for w in warnings)


def test_unquoted_variant_is_flagged_once_for_flannel_ext_and_ports_to_flannel(tmp_path, capsys):
    path = write(tmp_path, SubnetAddCommand="ip route add $SUBNET via $PUBLIC_IP")
    code, lines, _ = lint(capsys, path)
    assert code == 1
    assert lines == [
        f"{path}: Backend.SubnetAddCommand: warning: $SUBNET at line 1, column 14 is not double-quoted; its value "
        "comes from another node's lease, so the shell would split and glob it: write \"$SUBNET\"",
        f"{path}: Backend.SubnetAddCommand: warning: $PUBLIC_IP at line 1, column 26 is not double-quoted; its "
        "value comes from another node's lease, so the shell would split and glob it: write \"$PUBLIC_IP\""]
    # shellcheck's SC2086 at the same spots would say the same thing: it is not repeated.
    assert not [line for line in lines if "SC2086" in line]
    assert lint(capsys, path, "--target", "flannel") == (0, [], "")   # no splitting upstream: this form runs


def test_no_finding_is_reported_twice(tmp_path):
    commands = {"SubnetAddCommand": "read VTEP; ip neigh replace $SUBNET lladdr $VTEP dev $FLANNEL_IFACE; "
                                    "bridge fdb append $VTEP dev flannel.1 dst $PUBLIC_IP",
                "SubnetRemoveCommand": "ip route del $SUBNET && ip neigh del $SUBNET dev flannel.1"}
    for target in ("flannel-ext", "flannel"):
        findings, _ = lint_file(str(write(tmp_path, **commands)), target=target)
        spots = Counter((f.field, f.line, f.column, f.rule) for f in findings)
        assert findings and max(spots.values()) == 1, spots
        places = Counter((f.field, f.line, f.column) for f in findings if f.line)
        assert max(places.values()) == 1, [f for f in findings if places[(f.field, f.line, f.column)] > 1]


def test_vxlan_example_flags_export_read_and_or_command_substitution(capsys):
    path = EXAMPLES / "extension-vxlan.json"
    code, lines, _ = lint(capsys, path, "--target", "flannel")
    assert code == 1
    add = " ".join(lines_for(lines, path, "SubnetAddCommand", "warning"))
    for feature in ("shell builtin 'export' at line 1, column 1 (and 1 more)", "shell builtin 'read' at line 1",
                    "'&&' at line 1", "command substitution '$(…)' at line 1, column 18", "pipe '|'", "';'"):
        assert feature in add
    pre = " ".join(lines_for(lines, path, "PreStartupCommand", "warning"))
    assert "redirect '2>' at line 1, column 68" in pre
    assert "not double-quoted" not in add   # that is flannel-ext's concern, not portability
    assert lines_for(lines, path, "ShutdownCommand", "info")


# --- the checks, one by one ------------------------------------------------------------------

def test_read_variables_are_remote():
    findings = check_command("SubnetAddCommand", 'read -r KEY; wg set wg0 peer $KEY allowed-ips "$SUBNET"')
    warnings = messages(findings, "warning")
    assert any(m.startswith("$KEY at line 1, column 30 is not double-quoted; its value comes from stdin")
               for m in warnings)
    assert not any(m.startswith("$SUBNET") for m in warnings)


def test_remote_values_only_checked_in_subnet_commands():
    assert check_command("PostStartupCommand", "/bin/setup $SUBNET") == []
    assert check_command("PostStartupCommand", "/bin/setup $SUBNET", target="flannel") == []   # ports as is


def test_assignment_prefix_is_not_split_but_is_not_portable():
    assert check_command("SubnetAddCommand", "X=$SUBNET /bin/add") == []
    findings = check_command("SubnetAddCommand", "X=$SUBNET /bin/add", target="flannel")
    assert [m.split(" at ")[0] for m in messages(findings)] == ["variable assignment"]


@pytest.mark.parametrize("command, feature", [
    ("a || b", "'||'"), ("a > /tmp/x", "redirect '>'"), ("a `b`", "backticks"), ("a $(b)", "command substitution"),
    ("cd /tmp", "shell builtin 'cd'"), ("a 'x'", "quotes"), ("a ${X:-1}", "parameter expansion '${X:-1}'"),
    ("a $1", "special parameter '$1'"), ("a\nb", "newline"), ("if a; then b; fi", "shell keyword 'if'"),
])
def test_each_shell_feature_is_named_for_flannel(command, feature):
    found = messages(check_command("PreStartupCommand", command, target="flannel"))
    assert any(m.startswith(feature) and "does not port to flannel ≥ v0.28.2" in m for m in found), found
    assert check_command("PreStartupCommand", command) == []   # all fine under sh -c


def test_ipv6_values_are_empty_on_flannel():
    findings = check_command("SubnetAddCommand", '/bin/add "$SUBNET" "$IPV6SUBNET"', target="flannel")
    assert any(f.rule == "upstream-unset" and "$IPV6SUBNET at line 1, column 21 is empty on flannel" in f.message
               for f in findings)


def test_position_on_a_later_line():
    (finding,) = [f for f in check_command("PreStartupCommand", "/bin/a\n/bin/b | c", target="flannel")
                  if "pipe" in f.message]
    assert "line 2, column 8" in finding.message and (finding.line, finding.column) == (2, 8)


# --- the SubnetRemoveCommand contract --------------------------------------------------------

@pytest.mark.parametrize("command, flagged", [
    ('ip route del "$SUBNET" via "$PUBLIC_IP"', ["ip route del"]),                 # its failure is the result
    ('ip route del "$SUBNET" || true', []),
    ('ip route del "$SUBNET" 2>/dev/null || [ -z "$(ip route show exact "$SUBNET")" ]', []),
    ('ip route del "$SUBNET"; ip neigh del "$SUBNET" dev flannel.1; true', []),    # no set -e: ignored
    ('ip route del "$SUBNET" && bridge fdb del 0a:0b:0c:0d:0e:0f dev flannel.1', ["ip route del", "bridge fdb del"]),
    ('set -e; ip -4 route del "$SUBNET"; echo gone', ["ip route del"]),
    ('set -eu; set +e; ip route del "$SUBNET"; echo gone', []),
    ('ip neigh del "$SUBNET" dev flannel.1', ["ip neigh del"]),
    ('ip route replace "$SUBNET" via "$PUBLIC_IP"', []),
    ('echo "$(ip route del "$SUBNET")"', []),                                      # not the command's status
])
def test_remove_must_tolerate_an_absent_entry(command, flagged):
    findings = [f for f in check_command("SubnetRemoveCommand", command) if f.rule == "remove-not-idempotent"]
    assert [f.message.split("`")[1] for f in findings] == flagged
    assert not [f for f in check_command("SubnetAddCommand", command) if f.rule == "remove-not-idempotent"]


def test_remove_contract_for_flannel_needs_a_script():
    (finding,) = [f for f in check_command("SubnetRemoveCommand", "ip route del $SUBNET", target="flannel")
                  if f.rule == "remove-not-idempotent"]
    assert "no shell for `|| true`" in finding.message
    assert not [f for f in check_command("SubnetRemoveCommand", "/usr/libexec/flannel/subnet-remove",
                                         target="flannel")]


# --- inputs, outputs and exit codes ----------------------------------------------------------

def test_clean_recipe_exits_0_with_no_output(tmp_path, capsys):
    path = write(tmp_path, PreStartupCommand="/usr/local/libexec/flannel/pre-startup",
                 PostStartupCommand="/usr/local/libexec/flannel/post-startup",
                 SubnetAddCommand="/usr/local/libexec/flannel/subnet-add",
                 SubnetRemoveCommand="/usr/local/libexec/flannel/subnet-remove",
                 ShutdownCommand="")
    assert lint(capsys, path) == (0, [], "")
    assert lint(capsys, path, "--target", "flannel") == (0, [], "")


def test_a_shellcheck_error_is_a_finding(tmp_path, capsys):
    path = write(tmp_path, PostStartupCommand="if /bin/true; then /bin/echo up")
    code, lines, _ = lint(capsys, path)
    assert code == 1
    assert any(line.startswith(f"{path}: Backend.PostStartupCommand: error: SC1046 at line 1, column 1:")
               for line in lines), lines


def test_hook_variables_come_from_the_shell_hook(tmp_path):
    assert lint_module.COMMAND_VARS is shell.COMMAND_VARS and lint_module.REMOTE_VARS is shell.REMOTE_VARS
    findings, _ = lint_file(str(write(tmp_path, SubnetAddCommand='/bin/add "$SUBNET" "$PUBLIC_IPV6"')))
    assert not [f for f in findings if f.rule == "SC2154"]
    findings, _ = lint_file(str(write(tmp_path, SubnetAddCommand='/bin/add "$subnet"')))
    assert [f for f in findings if f.rule == "SC2154" and f.level == "warning"]


def test_missing_shellcheck_is_reported_once(tmp_path):
    path = write(tmp_path, PreStartupCommand="/bin/a", SubnetAddCommand="/bin/b")
    findings, notes = lint_file(str(path), shellcheck="/nonexistent/shellcheck")
    assert findings == []
    assert len(notes) == 1 and "is missing" in notes[0]


def test_stdin(capsys, monkeypatch):
    text = json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "extension",
                                                               "SubnetAddCommand": "ip route add $SUBNET"}})
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    code, lines, _ = lint(capsys, "-")
    assert code == 1 and lines[0].startswith("<stdin>: Backend.SubnetAddCommand: warning: $SUBNET at line 1")


def test_a_kube_flannel_configmap(tmp_path, capsys):
    """A whole manifest: the ConfigMap's net-conf.json is linted, in kube mode."""
    path = tmp_path / "kube-flannel-ext.yml"
    path.write_text(render_manifest(recipe="host-gw"))
    assert lint(capsys, path) == (0, [], "")
    code, lines, _ = lint(capsys, path, "--target", "flannel")
    assert code == 1
    assert lines[0].startswith(f"{path}: ConfigMap kube-flannel/flannel-ext-cfg net-conf.json: "
                               "Backend.SubnetAddCommand: warning: quotes at line 1")
    cm = {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "kube-flannel-cfg"},
          "data": {"net-conf.json": json.dumps({"Network": "10.0.0.0/30",   # kube mode: no subnet checks
                                                "Backend": {"Type": "extension", "SubnetAddCommand": "/bin/add"}})}}
    path.write_text(yaml.safe_dump(cm))
    assert lint(capsys, path) == (0, [], "")


@pytest.mark.parametrize("content, field", [
    ("foo: [", "input"), ("a: 1\n", "input"), ('{"Network": ', "config"),
    ('{"Network": "10.244.0.0/16", "Backend": {"Type": "extension", "SubnetAddCommand": ["ip"]}}',
     "Backend.SubnetAddCommand"),
])
def test_unusable_input_exits_2_with_one_line(tmp_path, capsys, content, field):
    path = tmp_path / "in"
    path.write_text(content)
    code, lines, _ = lint(capsys, path)
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"{path}: {field}: error: "), lines
    code, lines, _ = lint(capsys, tmp_path / "absent.json")
    assert code == 2 and lines == [f"{tmp_path / 'absent.json'}: input: error: cannot read it (No such file or "
                                   "directory); give a net-conf.json, a kube-flannel ConfigMap, or - for stdin"]


def test_json_output(tmp_path, capsys):
    path = write(tmp_path, SubnetAddCommand="ip route add $SUBNET", ShutdownCommand="/bin/down")
    code, out, _ = lint(capsys, path, "--json", "--target", "flannel")
    assert code == 0   # info only
    assert json.loads("\n".join(out)) == {"target": "flannel", "exit_code": 0, "findings": [
        {"source": str(path), "field": "Backend.ShutdownCommand", "level": "info", "rule": "upstream-ignores",
         "message": "upstream flannel never runs ShutdownCommand (flannel-ext does)", "line": None, "column": None}]}
    code, out, _ = lint(capsys, path, "--json")
    report = json.loads("\n".join(out))
    assert code == report["exit_code"] == 1
    assert [(f["rule"], f["line"], f["column"]) for f in report["findings"]] == [("unquoted-remote", 1, 14)]


def test_config_error_exits_2(tmp_path, capsys):
    path = write(tmp_path, SubnetAddCommand=["ip", "route"])
    code, lines, _ = lint(capsys, path)
    assert code == 2
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: Backend.SubnetAddCommand: error: must be a string")


def test_kube_mode_skips_subnet_checks(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"Network": "10.0.0.0/30", "Backend": {"Type": "extension"}}))
    assert lint(capsys, path)[0] == 2
    assert lint(capsys, path, "--kube")[0] == 0


def test_cli_entry_point(tmp_path):
    path = write(tmp_path, SubnetAddCommand="ip route add $SUBNET via $PUBLIC_IP")
    proc = subprocess.run([sys.executable, "-m", "flannel_ext", "lint", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 1
    assert f"{path}: Backend.SubnetAddCommand: warning: $SUBNET at line 1, column 14" in proc.stdout
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "flannel_ext", "lint", "-"], input=path.read_text(),
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 1 and proc.stdout.startswith("<stdin>: Backend.SubnetAddCommand: warning: $SUBNET")
