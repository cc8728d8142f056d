import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "dema_lab.cli.main", *args], capture_output=True, text=True)


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    assert "usage: dema-lab" in out.stdout and "info" in out.stdout


def test_info_reports_the_cpu_backend():
    out = run("info")
    assert out.returncode == 0, out.stderr
    assert "scan backend       cpu: numba" in out.stdout
