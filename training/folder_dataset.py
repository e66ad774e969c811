"""A folder of images as a Dataset: kohya-style `N_name` concept folders, caption files, masks.

Layout read (kohya's, which most LoRA datasets already use):
    folder/
        a.png              images directly here: one concept named after the folder
        10_ohwx dog/       concept "ohwx dog", repeated 10 times per epoch
            b.jpg  b.txt   caption file next to the image (`<stem><caption_extension>`)
            b_mask.png     sidecar mask, white = learn (`-masklabel` also accepted)
            more/c.webp    nested folders belong to the concept above them
        landscapes/        a folder without a number prefix: concept "landscapes", repeats 1
Hidden files and folders (names starting with ".", e.g. macOS `._x.png`) and files that are not
images are ignored. Everything read must resolve inside `root` (symlinks included): `root` is
the folder the server allows reading from.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..masking.alpha import find_sidecar, looks_like_sidecar, read_mask_file
from .dataset import Dataset, DatasetSample
from .image_io import DEFAULT_MAX_SIDE, IMAGE_EXTENSIONS, MIN_SIDE, UnreadableFile, probe_image, read_caption

ON_BAD_FILE = ("skip", "error")
_REPEATS_PREFIX = re.compile(r"^(\d+)_(.+)$")
_OUTSIDE = "symlink leads outside the allowed folder"


class _Scan:
    """One scan's settings and its notes; a bad file is noted and skipped, or raised."""

    def __init__(self, root: Path, folder: Path, caption_extension: str, on_bad_file: str, max_side: int):
        self.root, self.folder = root.resolve(), folder
        self.caption_extension = caption_extension if caption_extension.startswith(".") else f".{caption_extension}"
        self.on_bad_file, self.max_side = on_bad_file, max_side
        self.samples: list[DatasetSample] = []
        self.notes: list[str] = []
        self.uncaptioned: dict[str, list[str]] = {}  # concept -> images without a caption file

    def show(self, path) -> str:
        relative = Path(path).relative_to(self.folder).as_posix()
        return str(path) if relative == "." else relative

    def refuse(self, path, reason: str) -> None:
        if self.on_bad_file == "error":
            raise ValueError(f"cannot use {self.show(path)}: {reason}")
        self.notes.append(f"skipped {self.show(path)}: {reason}")

    def allowed(self, path: Path) -> bool:
        """Whether the path resolves inside root; if not, it is refused."""
        if path.resolve().is_relative_to(self.root):
            return True
        self.refuse(path, _OUTSIDE)
        return False

    def concept_of(self, directory: Path) -> tuple[str, int] | None:
        match = _REPEATS_PREFIX.match(directory.name)
        if match is None:
            return directory.name, 1
        if int(match[1]) == 0:
            self.refuse(directory, "repeats 0 in folder name")
            return None
        return match[2], int(match[1])

    def directory(self, directory: Path, concept: str, repeats: int, recurse: bool, ancestors=frozenset()):
        real = directory.resolve()
        if real in ancestors:
            self.refuse(directory, "symlink loop")
            return
        entries = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
        if recurse:
            for sub in (p for p in entries if p.is_dir() and self.allowed(p)):
                self.directory(sub, concept, repeats, True, ancestors | {real})
        self.images(sorted(p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                    concept, repeats)

    def images(self, files: list[Path], concept: str, repeats: int):
        masks = {mask.name.lower() for mask in map(find_sidecar, files) if mask is not None}
        by_stem: dict[str, Path] = {}
        for file in files:
            if file.name.lower() in masks:
                continue
            if looks_like_sidecar(file):
                self.notes.append(f"skipped {self.show(file)}: named like a mask, but no image of that name is "
                                  f"beside it")
                continue
            if file.stem in by_stem:
                self.refuse(file, f"another image has the same name ({by_stem[file.stem].name})")
                continue
            by_stem[file.stem] = file
            if self.allowed(file):
                self.image(file, concept, repeats)

    def image(self, file: Path, concept: str, repeats: int):
        mask = find_sidecar(file)
        mask = mask if mask is not None and self.allowed(mask) else None
        caption_file = file.with_name(file.stem + self.caption_extension)
        has_caption = caption_file.is_file() and self.allowed(caption_file)
        try:
            probe = probe_image(file, self.max_side)
            mask_probe = probe_image(mask, self.max_side) if mask is not None else None
            caption = read_caption(caption_file) if has_caption else concept
        except UnreadableFile as e:
            self.refuse(file, e.reason if e.path == str(file) else f"{self.show(e.path)}: {e.reason}")
            return
        if min(probe.size) < MIN_SIDE:
            self.refuse(file, f"{_wxh(probe.size)} pixels is too small to train on (at least {MIN_SIDE} on each side)")
            return
        if probe.alpha_empty:
            self.refuse(file, "fully transparent: its loss weight is zero everywhere (nothing to learn)")
            return
        if mask is not None and float(read_mask_file(mask, probe.size, mask_probe.source_size)[0].max()) == 0.0:
            self.refuse(file, f"its mask {self.show(mask)} is black everywhere (nothing to learn)")
            return
        if not has_caption:
            self.uncaptioned.setdefault(concept, []).append(self.show(file))
        elif not caption:
            self.notes.append(f"empty caption: {self.show(caption_file)}")
        if probe.frames > 1:
            self.notes.append(f"{self.show(file)}: animated ({probe.frames} frames), using the first frame")
        if mask_probe is not None and mask_probe.source_size != probe.source_size:
            self.notes.append(f"mask {self.show(mask)} is {_wxh(mask_probe.source_size)} but its image is "
                              f"{_wxh(probe.source_size)}: it will be resized")
        self.samples.append(DatasetSample(
            caption=caption, concept=concept, path=str(file), mask_path=None if mask is None else str(mask),
            alpha_mask=mask is None and probe.has_alpha, size=probe.size, repeats=repeats))


    def caption_notes(self) -> list[str]:
        """One note per concept for its images without a caption, naming the first few."""
        notes = []
        for concept, files in self.uncaptioned.items():
            if len(files) == 1:
                notes.append(f"no caption: {files[0]} (using '{concept}')")
                continue
            shown = ", ".join(files[:_LISTED]) + (f" and {len(files) - _LISTED} more" if len(files) > _LISTED else "")
            notes.append(f"no caption for {len(files)} images of '{concept}' (using '{concept}'): {shown}")
        return notes


_LISTED = 3  # images named in a concept's "no caption" note


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def scan_folder(root: Path, folder: Path, caption_extension: str = ".txt", on_bad_file: str = "skip",
                max_side: int = DEFAULT_MAX_SIDE) -> Dataset:
    """The dataset in `folder` (relative paths are taken from `root`), which must lie inside root.

    Each image is decoded once (JPEGs at reduced scale) so corrupt or truncated files and
    transparency are found now, not during training. on_bad_file: "skip" notes a bad file (and
    a duplicate name, a `0_` folder, a symlink out of root) in Dataset.notes and goes on; "error"
    raises a ValueError naming it. Samples are sorted by path.
    """
    if on_bad_file not in ON_BAD_FILE:
        raise ValueError(f"on_bad_file must be one of {ON_BAD_FILE}, not {on_bad_file!r}")
    root, folder = Path(root), Path(folder)
    folder = folder if folder.is_absolute() else root / folder
    if not folder.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"the dataset folder {folder} is not inside the allowed folder {root}")
    if not folder.is_dir():
        raise ValueError(f"the dataset folder {folder} does not exist or is not a folder")
    scan = _Scan(root, folder, caption_extension, on_bad_file, max_side)
    top = scan.concept_of(folder)
    if top is not None:
        scan.directory(folder, *top, recurse=False)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        concept = scan.concept_of(sub) if scan.allowed(sub) else None
        if concept is not None:
            scan.directory(sub, *concept, recurse=True, ancestors=frozenset({folder.resolve()}))
    if not scan.samples:
        shown = folder.relative_to(root).as_posix() if folder.is_relative_to(root) else folder.name
        raise ValueError("\n".join([f"no images found in the dataset folder {shown!r}", *scan.notes]))
    return Dataset(samples=tuple(sorted(scan.samples, key=lambda s: s.path)),
                   notes=tuple(scan.caption_notes() + scan.notes))


def summarize(dataset: Dataset) -> str:
    """Concepts with image counts, repeats and images per epoch, the total, and the notes."""
    lines = []
    for concept, samples in dataset.concepts().items():
        repeats = sorted({s.repeats for s in samples})
        shown = str(repeats[0]) if len(repeats) == 1 else f"{repeats[0]}-{repeats[-1]}"
        masked = sum(s.mask is not None or s.mask_path is not None or s.alpha_mask for s in samples)
        lines.append(f"  {concept}: {len(samples)} image(s) x {shown} repeats = {sum(s.repeats for s in samples)} "
                     f"per epoch" + (f" ({masked} masked)" if masked else ""))
    head = (f"{len(dataset.samples)} image(s) in {len(lines)} concept(s): {dataset.images_per_epoch} "
            f"images per epoch")
    notes = [f"notes ({len(dataset.notes)}):", *(f"  {note}" for note in dataset.notes)] if dataset.notes else []
    return "\n".join([head, *lines, *notes])
