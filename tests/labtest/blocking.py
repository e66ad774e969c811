"""Makes chosen packages unimportable in a child Python, as if they were not installed."""

from pathlib import Path

_SITECUSTOMIZE = """
import importlib.machinery, sys
BLOCKED = set({names!r})
class Missing:
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {{spec.name!r}} (blocked by the test)", name=spec.name)
    def exec_module(self, module):
        pass
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, Missing())
sys.meta_path.insert(0, Blocker())
"""


def blocker_dir(directory: Path, names: list[str]) -> Path:
    """Writes a sitecustomize.py into `directory`; put it first on the child's PYTHONPATH."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(names=sorted(names)))
    return directory


def run_child(code: str, blocked: list[str], tmp_path: Path) -> str:
    """Runs `code` in a child Python (with the pack importable) where `blocked` packages cannot
    be imported; returns its stdout."""
    import subprocess
    import sys

    from . import PACK_ROOT

    blocker = blocker_dir(tmp_path / "blocker", blocked)
    prelude = f"import sys; sys.path.insert(0, {str(PACK_ROOT / 'tests')!r}); import labtest; labtest.register_pack()\n"
    env = {"PYTHONPATH": str(blocker), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout
