"""`flannel-ext lint`: config errors, shellcheck, unquoted remote values, portability to flannel ≥ v0.28.2."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from examples import FLANNEL_EXAMPLES as EXAMPLES

from flannel_ext.cli import main
from flannel_ext._commands.lint import check_command, lint_file

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, **backend):
    path = tmp_path / "net-conf.json"
    path.write_text(json.dumps({"Network": "10.50.0.0/16", "Backend": {"Type": "extension", **backend}}))
    return path


def lint(capsys, path, *extra):
    code = main(["lint", str(path), *extra])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def lines_for(lines, path, field, level):
    return [line for line in lines if line.startswith(f"{path}: Backend.{field}: {level}: ")]


def test_hostgw_example_is_not_portable_because_of_quotes(capsys):
    path = EXAMPLES / "extension-hostgw.json"
    code, lines, _ = lint(capsys, path)
    assert code == 1
    for field in ("SubnetAddCommand", "SubnetRemoveCommand"):
        warnings = lines_for(lines, path, field, "warning")
        assert any(w.split(": warning: ")[1].startswith("quotes at line 1, column 14 (and 1 more) does not port "
                                                         "to flannel ≥ v0.28.2") for w in warnings), warnings
        assert not any("not double-quoted" in w for w in warnings)
    assert not [line for line in lines if ": error: " in line]


def test_unquoted_hostgw_variant_flags_the_remote_expansions(tmp_path, capsys):
    path = write(tmp_path, SubnetAddCommand="ip route add $SUBNET via $PUBLIC_IP")
    code, lines, _ = lint(capsys, path)
    assert code == 1
    warnings = lines_for(lines, path, "SubnetAddCommand", "warning")
    assert any("$SUBNET at line 1, column 14 is not double-quoted" in w for w in warnings)
    assert any("$PUBLIC_IP at line 1, column 26 is not double-quoted" in w for w in warnings)
    assert not any("quotes at" in w for w in warnings)   # this form does run on flannel ≥ v0.28.2


def test_vxlan_example_flags_export_read_and_or_command_substitution(capsys):
    path = EXAMPLES / "extension-vxlan.json"
    code, lines, _ = lint(capsys, path)
    assert code == 1
    add = " ".join(lines_for(lines, path, "SubnetAddCommand", "warning"))
    for feature in ("shell builtin 'export' at line 1, column 1 (and 1 more)", "shell builtin 'read' at line 1",
                    "'&&' at line 1", "command substitution '$(…)' at line 1, column 18", "pipe '|'", "';'"):
        assert feature in add
    pre = " ".join(lines_for(lines, path, "PreStartupCommand", "warning"))
    assert "redirect '2>' at line 1, column 68" in pre
    assert "not double-quoted" not in add   # every remote value is quoted there
    assert lines_for(lines, path, "ShutdownCommand", "info")


def test_read_variables_are_remote(tmp_path):
    findings = check_command("SubnetAddCommand", 'read -r KEY; wg set wg0 peer $KEY allowed-ips "$SUBNET"')
    messages = [f.message for f in findings if f.level == "warning"]
    assert any(m.startswith("$KEY at line 1, column 30 is not double-quoted; its value comes from stdin")
               for m in messages)
    assert not any(m.startswith("$SUBNET") for m in messages)


def test_remote_values_only_checked_in_subnet_commands():
    findings = check_command("PostStartupCommand", "/bin/setup $SUBNET")
    assert not [f for f in findings if "not double-quoted" in f.message]
    assert not findings   # no shell feature either: this one ports as is


def test_assignment_prefix_is_not_split_but_is_not_portable():
    findings = check_command("SubnetAddCommand", "X=$SUBNET /bin/add")
    assert [f.message.split(" at ")[0] for f in findings] == ["variable assignment"]


@pytest.mark.parametrize("command, feature", [
    ("a || b", "'||'"), ("a > /tmp/x", "redirect '>'"), ("a `b`", "backticks"), ("a $(b)", "command substitution"),
    ("cd /tmp", "shell builtin 'cd'"), ("a 'x'", "quotes"), ("a ${X:-1}", "parameter expansion '${X:-1}'"),
    ("a $1", "special parameter '$1'"), ("a\nb", "newline"), ("if a; then b; fi", "shell keyword 'if'"),
])
def test_each_shell_feature_is_named(command, feature):
    messages = [f.message for f in check_command("PreStartupCommand", command)]
    assert any(m.startswith(feature) and "does not port to flannel ≥ v0.28.2" in m for m in messages), messages


def test_position_on_a_later_line():
    (finding,) = [f for f in check_command("PreStartupCommand", "/bin/a\n/bin/b | c") if "pipe" in f.message]
    assert "line 2, column 8" in finding.message


def test_clean_recipe_exits_0_with_no_output(tmp_path, capsys):
    path = write(tmp_path, PreStartupCommand="/usr/local/libexec/flannel/pre-startup",
                 PostStartupCommand="/usr/local/libexec/flannel/post-startup",
                 SubnetAddCommand="/usr/local/libexec/flannel/subnet-add",
                 SubnetRemoveCommand="/usr/local/libexec/flannel/subnet-remove",
                 ShutdownCommand="")
    code, lines, err = lint(capsys, path)
    assert (code, lines, err) == (0, [], "")


def test_shellcheck_error_exits_2(tmp_path, capsys):
    path = write(tmp_path, PostStartupCommand="if /bin/true; then /bin/echo up")
    code, lines, _ = lint(capsys, path)
    assert code == 2
    assert any(line.startswith(f"{path}: Backend.PostStartupCommand: error: SC1046 at line 1, column 1:")
               for line in lines), lines


def test_hook_variables_are_declared_for_shellcheck(tmp_path):
    findings, _ = lint_file(str(write(tmp_path, SubnetAddCommand='/bin/add "$SUBNET" "$PUBLIC_IPV6"')))
    assert not [f for f in findings if "SC2154" in f.message]
    findings, _ = lint_file(str(write(tmp_path, SubnetAddCommand='/bin/add "$subnet"')))
    assert [f for f in findings if "SC2154" in f.message and f.level == "warning"]


def test_missing_shellcheck_is_reported_once(tmp_path):
    path = write(tmp_path, PreStartupCommand="/bin/a", SubnetAddCommand="/bin/b")
    findings, notes = lint_file(str(path), shellcheck="/nonexistent/shellcheck")
    assert findings == []
    assert len(notes) == 1 and "not found" in notes[0]


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


@pytest.mark.parametrize("name", ["host-gw.json", "vxlan.json"])
def test_shipped_recipes_have_no_errors(name, capsys):
    path = REPO / "recipes" / name
    code, lines, _ = lint(capsys, path)
    assert code <= 1, lines
    assert not [line for line in lines if ": error: " in line]
