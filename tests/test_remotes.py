"""Sharing through real servers started on 127.0.0.1: DVC remotes (a local directory, and SSH
against a real sshd with dvc-ssh). A real `mlflow server` receiving a stage's run: test_tracking.py."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import free_port, sh, stop, wait_for_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@pytest.fixture(scope="module")
def published(tiny_repo):
    """The tiny repo after `dvc repro`, its results committed: what a user pushes. Tests of the
    same repo ran experiments in it before (test_e2e.py); `dvc repro` makes outputs and dvc.lock
    agree again whatever those left, as a user does before pushing."""
    root, env, _ = tiny_repo
    sh(["dvc", "repro"], root, env)
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "results", "--allow-empty"], root, env)
    return root, env


def round_trip(root: Path, env: dict, remote_args: list[str], dst: Path) -> str:
    """Push from `root` to a new default remote, clone the git repo, pull there; return the
    clone's `dvc repro` log."""
    sh(["dvc", "remote", "add", "-f", "-d", "--local", "shared", *remote_args[:1]], root, env)
    for key, value in zip(remote_args[1::2], remote_args[2::2]):
        sh(["dvc", "remote", "modify", "--local", "shared", key, value], root, env)
    pushed = sh(["dvc", "push"], root, env)
    assert "pushed" in pushed or "Everything is up to date" in pushed, pushed
    sh(["git", "clone", "-q", str(root), str(dst)], dst.parent, env)
    shutil.copy(root / ".dvc/config.local", dst / ".dvc/config.local")  # remote settings travel outside git here
    sh(["dvc", "pull"], dst, env)
    for out in ("data/prepared/train.parquet", "data/models/teacher/model.safetensors", "data/signals/manifest.json", "data/students/small-kd_at-s1/model.safetensors"):
        assert (dst / out).is_file(), out
    status = sh(["dvc", "status"], dst, env)
    assert "Data and pipelines are up to date" in status, status
    return sh(["dvc", "repro"], dst, env)


def test_local_directory_remote_round_trip(published, tmp_path):
    root, env = published
    log = round_trip(root, env, [str(tmp_path / "store")], tmp_path / "clone")
    assert "Running stage" not in log and "Data and pipelines are up to date" in log


@pytest.fixture
def sshd(tmp_path):
    """A real OpenSSH server on 127.0.0.1 with a throwaway host key and client key."""
    if not Path(SSHD).exists():
        pytest.fail(f"{SSHD} not found: install Debian's openssh-server (`.ci/run` does)")
    home = tmp_path / "ssh"
    home.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)], check=True)
    (home / "authorized_keys").write_text((home / "client_key.pub").read_text())
    port = free_port()
    (home / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\nAuthorizedKeysFile {home / 'authorized_keys'}\n"
        f"PidFile {home / 'sshd.pid'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(home / "sshd_config")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, proc)
        host_key = (home / "host_key.pub").read_text().split()
        (home / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
        yield {"port": port, "key": home / "client_key", "known_hosts": home / "known_hosts", "user": getpass.getuser()}
    finally:
        stop(proc)


def test_ssh_remote_round_trip(published, tmp_path, sshd):
    root, env = published
    env = env | {"HOME": str(tmp_path / "home")}  # the user's ~/.ssh: only our known_hosts
    (tmp_path / "home/.ssh").mkdir(parents=True)
    shutil.copy(sshd["known_hosts"], tmp_path / "home/.ssh/known_hosts")
    url = f"ssh://127.0.0.1:{sshd['port']}{tmp_path / 'ssh-store'}"
    log = round_trip(root, env, [url, "user", sshd["user"], "keyfile", str(sshd["key"])], tmp_path / "clone")
    assert "Running stage" not in log and "Data and pipelines are up to date" in log
    assert any((tmp_path / "ssh-store").rglob("*")), "nothing arrived on the SSH side"
