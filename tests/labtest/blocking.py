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
