"""Every file a training run may write, decided and checked before its first step.

A run writes, under `<loras folder>/<subfolder>/`: its final LoRA `<name>.safetensors`; periodic
saves `<name>-stepNNNNNN.safetensors`, each with a `.trainstate` when training states are kept;
and on Cancel `<name>_interrupted_<step>.safetensors` (+ `.trainstate`), or with a `-N` suffix when
that name is taken. Nothing that can be known up front may fail at a save after hours of
training: names and their lengths (temporary names included), the folder (no symbolic link out of
the loras folder), the precision, files of an earlier run that the schedule would replace, and
free space for the largest save are all checked here. Errors name the input and the file relative
to the loras folder, never a server path.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .lora_file import (NAME_MAX, SAVE_DTYPES, check_output_name, check_subfolder, remove_stale_temporaries,
                        temporary_name_length)

STATE_SUFFIX = ".trainstate"
INTERRUPTED_SUFFIXES = 10_000  # `_interrupted_<step>`, then `-1` ... `-9999`
PATH_MAX = 4096
_SPACE_MARGIN = 1 << 20  # metadata and file-system overhead beyond the tensors


@dataclass(frozen=True)
class SavePlan:
    root: Path  # the loras folder
    subfolder: str
    name: str
    steps: int
    overwrite: bool
    save_state: bool
    keep_last: int
    precision: str

    @classmethod
    def create(cls, root: Path, subfolder: str, output_name: str, steps: int, overwrite: bool, save_state: bool,
               keep_last: int, precision: str) -> "SavePlan":
        """Checks everything that does not depend on the dataset: names, lengths, folder, precision."""
        if precision not in SAVE_DTYPES:
            raise ValueError(f"precision: {precision!r} is not one of {', '.join(SAVE_DTYPES)}")
        if keep_last < 0:
            raise ValueError(f"keep_last: must be 0 (keep all) or more, not {keep_last}")
        name = check_output_name(output_name)
        try:
            subfolder = check_subfolder(subfolder)
        except ValueError as error:
            text = str(error)
            raise ValueError(text if text.startswith("subfolder") else f"subfolder: {text}") from None
        plan = cls(Path(root), subfolder, name, steps, overwrite, save_state, keep_last, precision)
        plan._check_folder()
        plan._check_name_lengths()
        return plan

    # --- names ---------------------------------------------------------------------------------
    @property
    def folder(self) -> Path:
        return self.root / self.subfolder if self.subfolder else self.root

    @property
    def final(self) -> Path:
        return self.folder / f"{self.name}.safetensors"

    def periodic(self, step: int) -> Path:
        return self.folder / f"{self.name}-step{step:06d}.safetensors"

    @staticmethod
    def state_of(lora: Path) -> Path:
        return lora.with_suffix(STATE_SUFFIX)

    def shown(self, path: Path) -> str:
        """A file's name relative to the loras folder (what messages show)."""
        return Path(path).relative_to(self.root).as_posix()

    def interrupted(self, step: int) -> Path:
        """`<name>_interrupted_<step>`, or with the first free `-N` suffix when that name or its
        training state exists: no earlier file is ever replaced, whatever `overwrite` says."""
        stem = f"{self.name}_interrupted_{step}"
        for n in range(INTERRUPTED_SUFFIXES):
            path = self.folder / f"{stem}{f'-{n}' if n else ''}.safetensors"
            if not path.exists() and not path.is_symlink() and not self.state_of(path).exists():
                return path
        raise FileExistsError(f"output_name: {INTERRUPTED_SUFFIXES} interrupted files named {stem}* exist in "
                              f"{self.shown(self.folder) if self.subfolder else 'the loras folder'}; remove some")

    # --- checks --------------------------------------------------------------------------------
    def _check_folder(self) -> None:
        root = self.root.resolve()
        real = self.folder.resolve()
        if not real.is_relative_to(root):
            raise ValueError(f"subfolder: {self.subfolder!r} leads outside the loras folder through a symbolic "
                             f"link; nothing is written through a link that leaves it")
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"subfolder: {self.subfolder!r} exists in the loras folder but is not a folder")

    def longest_stems(self) -> list[str]:
        digits = str(max(self.steps, 1))
        return [self.name, f"{self.name}-step{self.steps:06d}",
                f"{self.name}_interrupted_{digits}-{INTERRUPTED_SUFFIXES - 1}"]

    def _check_name_lengths(self) -> None:
        limit = _name_max(self.folder)
        longest = max(self.longest_stems(), key=temporary_name_length)
        need = max(temporary_name_length(longest), len(os.fsencode(longest + ".safetensors")))
        if need > limit:
            allowed = len(os.fsencode(self.name)) - (need - limit)
            raise ValueError(f"output_name: {self.name[:40]!r}... is {len(os.fsencode(self.name))} bytes long; with "
                             f"the suffixes this run may add (e.g. {longest[len(self.name):]!r}) and the temporary "
                             f"name of a save, its files would exceed the file-name limit of {limit} bytes: use at "
                             f"most {max(allowed, 0)} bytes")
        full = len(os.fsencode(str(self.folder.resolve()))) + 1 + need
        if full > PATH_MAX:
            raise ValueError(f"subfolder: the files of this run would have paths of {full} bytes, over the limit of "
                             f"{PATH_MAX}; use a shorter subfolder or output_name")

    def check_space(self, lora_bytes: int, state_bytes: int) -> None:
        """Free space for the largest single save (a LoRA and its training state)."""
        need = lora_bytes + (state_bytes if self.save_state else 0) + _SPACE_MARGIN
        probe = _existing_ancestor(self.folder)
        free = shutil.disk_usage(probe).free
        if free < need:
            raise OSError(f"save: {_mb(free)} free where {self.shown(self.folder) or 'the loras folder'} "
                          f"is, but one save of this run needs about {_mb(need)}; free some space or save "
                          f"elsewhere (subfolder), or lower the rank")

    def planned_files(self, periodic_steps: list[int]) -> list[Path]:
        """The files this run writes by name (interrupted files pick a free name when written)."""
        files = [self.final]
        for step in periodic_steps:
            files.append(self.periodic(step))
            if self.save_state:
                files.append(self.state_of(self.periodic(step)))
        return files

    def check_clashes(self, periodic_steps: list[int], resumed: bool) -> None:
        """With overwrite off, no file the run would write may exist (an earlier run of the same
        name: its periodic saves and final file); refused now, naming the first, not at its step."""
        if self.overwrite:
            return
        existing = [p for p in self.planned_files(periodic_steps) if p.exists() or p.is_symlink()]
        if existing:
            more = f" and {len(existing) - 1} more of this run's files" if len(existing) > 1 else ""
            why = ("a resumed run writes the saves after its state's step again" if resumed
                   else "an earlier run of this name left them")
            raise FileExistsError(f"output_name: {self.shown(existing[0])}{more} already exist in the loras folder "
                                  f"({why}); choose another output_name, remove them, or allow overwriting in "
                                  f"the save settings")

    def earlier_periodic(self, up_to_step: int) -> list[Path]:
        """Periodic saves of this name at steps up to `up_to_step` (a resumed run's earlier part),
        oldest first: keep_last counts them with the run's own."""
        pattern = re.compile(rf"^{re.escape(self.name)}-step(\d{{6,}})\.safetensors\Z")
        found = []
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                match = pattern.match(path.name)
                if match and int(match[1]) <= up_to_step and path.is_file():
                    found.append((int(match[1]), path))
        return [path for _, path in sorted(found)]

    def clean_leftovers(self) -> list[str]:
        """Temporary files of saves cut short by a killed process, in this run's folder."""
        return remove_stale_temporaries(self.folder)


def _existing_ancestor(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _name_max(folder: Path) -> int:
    try:
        return min(NAME_MAX, os.pathconf(_existing_ancestor(folder), "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return NAME_MAX


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"
