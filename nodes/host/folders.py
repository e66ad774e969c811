"""Folders: ComfyUI's loras folder (LoRA and training-state files), the dataset folders a node
may read (ComfyUI's input folder and the roots allowed in the pack's config), rembg weights."""

from __future__ import annotations

from pathlib import Path


def loras_folder():
    import folder_paths

    return Path(folder_paths.get_folder_paths("loras")[0])


def find_lora(name: str):
    """Full path of a LoRA by its name in ComfyUI's loras folders, or by a full path that lies
    inside one of them (a Train node's lora_path output); anything else is a clear error. A name
    that leads outside its loras folder through a symbolic link is refused like a missing one."""
    import folder_paths

    roots = [Path(root).resolve() for root in folder_paths.get_folder_paths("loras")]
    path = folder_paths.get_full_path("loras", name)
    candidate = Path(path).resolve() if path is not None else Path(name).resolve()
    if candidate.is_file() and any(candidate.is_relative_to(root) for root in roots):
        return Path(path) if path is not None else candidate
    if path is not None:
        raise FileNotFoundError(f"continue_from: {name!r} leads outside ComfyUI's loras folders through a "
                                f"symbolic link; such files are not read")
    raise FileNotFoundError(f"continue_from: LoRA {Path(name).name if Path(name).is_absolute() else name!r} is "
                            f"not in ComfyUI's loras folders")


def lora_display_name(path) -> str:
    """A file's name relative to the loras folder that holds it (never the server's full path)."""
    import folder_paths

    path = Path(path)
    for root in folder_paths.get_folder_paths("loras"):
        for base in (Path(root), Path(root).resolve()):
            if path.is_relative_to(base):
                return path.relative_to(base).as_posix()
    return path.name


def lora_file_names() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list("loras")


def state_file_names(suffix: str) -> list[str]:
    """Training-state files (relative names) in ComfyUI's loras folders."""
    import folder_paths

    names = set()
    for root in folder_paths.get_folder_paths("loras"):
        base = Path(root)
        if base.is_dir():
            names.update(p.relative_to(base).as_posix() for p in base.rglob(f"*{suffix}"))
    return sorted(names)


def find_state_file(name: str) -> Path:
    """A training-state file by its relative name; never a path outside the loras folders."""
    import folder_paths

    for root in folder_paths.get_folder_paths("loras"):
        base = Path(root).resolve()
        candidate = (base / name).resolve()
        if candidate.is_relative_to(base) and candidate.is_file():
            return candidate
    raise FileNotFoundError(f"resume_from: {name!r} is not a training state in ComfyUI's loras folders")


# --- Dataset folders ---------------------------------------------------------------------------

CONFIG_FILE_NAME = "loralab_config.json"


def input_folder() -> Path:
    import folder_paths

    return Path(folder_paths.get_input_directory()).resolve()


def input_subfolders(depth: int = 2) -> list[str]:
    """Folders inside ComfyUI's input folder (relative, up to `depth` levels), for a combo."""
    root = input_folder()
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_dir() and len(path.relative_to(root).parts) <= depth and not path.name.startswith("."):
            found.append(path.relative_to(root).as_posix())
    return found


def config_path() -> Path:
    """The pack's config file: $LORALAB_CONFIG, else loralab_config.json in the pack folder."""
    import os

    return Path(os.environ.get("LORALAB_CONFIG") or Path(__file__).resolve().parents[2] / CONFIG_FILE_NAME)


def allowed_dataset_roots() -> list[Path]:
    """ComfyUI's input folder plus the roots the user listed under "dataset_roots" in the config
    file. A path typed into a node is only read when it lies under one of them: a server that
    listens on a network must not read arbitrary files for whoever reaches it."""
    import json

    roots = [input_folder()]
    path = config_path()
    if path.is_file():
        try:
            extra = json.loads(path.read_text(encoding="utf-8")).get("dataset_roots", [])
        except (OSError, ValueError, AttributeError) as error:
            raise ValueError(f"{path}: cannot read the LoRA Lab config ({error})") from None
        roots += [Path(p).expanduser().resolve() for p in extra]
    return roots


def resolve_dataset_folder(folder: str, custom_path: str) -> tuple[Path, Path]:
    """(root, folder) for a Load Dataset node: a folder of the input directory, or a typed path
    that must resolve inside an allowed root."""
    if custom_path.strip():
        target = Path(custom_path.strip()).expanduser().resolve()
        for root in allowed_dataset_roots():
            if target.is_relative_to(root):
                return root, target
        raise ValueError(f"custom_path: {custom_path.strip()!r} is not inside an allowed dataset root: a typed "
                         f"path must lie in ComfyUI's input folder or under a \"dataset_roots\" entry of the pack's "
                         f"{CONFIG_FILE_NAME} (ask whoever runs the server to add it)")
    root = input_folder()
    target = (root / folder).resolve()
    if not target.is_relative_to(root):
        raise ValueError(f"folder: {folder!r} is outside ComfyUI's input folder")
    return root, target


# --- Background-removal weights ---------------------------------------------------------------

def rembg_model_folders() -> list[Path]:
    """ComfyUI's models/rembg folder(s), registered on first use so extra_model_paths.yaml can
    add more; background removal looks there before rembg's own homes."""
    import folder_paths

    if "rembg" not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path("rembg", str(Path(folder_paths.models_dir) / "rembg"), is_default=True)
    return [Path(p) for p in folder_paths.get_folder_paths("rembg")]
