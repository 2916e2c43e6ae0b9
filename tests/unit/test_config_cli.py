"""`flannel-ext run` with a bad net-conf.json: one line naming the problem, exit code 2."""
import json
import subprocess
import sys

import pytest

BAD = {
    "syntax.json": ('{"Network": "10.0.0.0/16",, "Backend": {"Type": "extension"}}',
                    "invalid JSON at line 1, column 27"),
    "type.json": (json.dumps({"Network": "10.0.0.0/16", "Backend": {"Type": "vxlan"}}),
                  "Backend.Type: unsupported backend type (got 'vxlan')"),
    "sublen.json": (json.dumps({"Network": "10.0.0.0/16", "SubnetLen": 31, "Backend": {"Type": "extension"}}),
                    "SubnetLen: SubnetLen must be less than /31"),
    "command.json": (json.dumps({"Network": "10.0.0.0/16",
                                 "Backend": {"Type": "extension", "SubnetAddCommand": "   "}}),
                     "Backend.SubnetAddCommand: is only whitespace"),
}


@pytest.mark.parametrize("name", sorted(BAD) + ["missing.json"])
def test_run_with_bad_config_exits_2_with_one_line(tmp_path, name):
    path = tmp_path / name
    if name in BAD:
        path.write_text(BAD[name][0])
        expected = BAD[name][1]
    else:
        expected = "file not found"
    proc = subprocess.run(
        [sys.executable, "-m", "flannel_ext", "run", "--net-conf", str(path),
         "--store", f"sqlite:{tmp_path / 'x.db'}"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{path}: {expected}" in proc.stderr


def test_run_with_an_unusable_state_dir_is_one_line(tmp_path):
    """A --state-dir that cannot be created (a file is in the way) is one error line, not
    os.makedirs' traceback, and the lease store is left as it was (nothing acquired)."""
    net_conf = tmp_path / "net-conf.json"
    net_conf.write_text(json.dumps({"Network": "10.0.0.0/16", "Backend": {"Type": "extension"}}))
    (tmp_path / "file").write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "flannel_ext", "run", "--net-conf", str(net_conf), "--iface", "lo",
         "--store", f"sqlite:{tmp_path / 'x.db'}", "--subnet-file", str(tmp_path / "subnet.env"),
         "--state-dir", str(tmp_path / "file" / "state")],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"flannel-ext: error: cannot create the state dir: {tmp_path / 'file' / 'state'}: Not a directory; "
        "pass a writable --state-dir")
    assert not (tmp_path / "subnet.env").exists()
