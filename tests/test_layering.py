"""The layering (docs/architecture.md) holds: import-linter's contracts in pyproject.toml are all kept."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")


def lint(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_every_import_contract_is_kept():
    proc = lint()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and "6 kept" in proc.stdout


def test_a_broken_contract_is_reported(tmp_path):
    """The checker sees the tree's real imports: a contract the tree breaks (the lab's train wiring imports agents)
    fails, naming the import."""
    config = tmp_path / "contracts.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["plasticrl"]\n\n'
                      '[[tool.importlinter.contracts]]\nname = "train does not import agents"\ntype = "forbidden"\n'
                      'source_modules = ["plasticrl.lab.train"]\nforbidden_modules = ["plasticrl.agents"]\n')
    proc = lint("--config", str(config))
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "BROKEN" in proc.stdout and "plasticrl.lab.train -> plasticrl.agents" in proc.stdout
