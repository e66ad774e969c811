"""Fixtures of the ComfyUI tier: ComfyUI imported in-process, and a real server over HTTP."""

import pytest

from labtest import find_comfyui
from labtest.inprocess import import_comfyui
from labtest.server import ComfyServer


@pytest.fixture(scope="session")
def comfy_dir():
    path = find_comfyui()
    if path is None:
        pytest.skip("no ComfyUI source tree found")
    return path


@pytest.fixture(scope="session")
def comfy_nodes(comfy_dir):
    """ComfyUI's `nodes` module, imported in this process on the CPU."""
    return import_comfyui(comfy_dir)


@pytest.fixture(scope="session")
def host(comfy_nodes):
    from comfyui_lora_lab.nodes import host

    return host


@pytest.fixture(scope="session")
def server(comfy_dir, tmp_path_factory):
    """One real ComfyUI server (main.py --cpu) for the whole session, with only this pack."""
    srv = ComfyServer(comfy_dir, tmp_path_factory.mktemp("comfyui-base")).start()
    yield srv
    srv.stop()


@pytest.fixture
def loras_dir(comfy_nodes, tmp_path):
    """ComfyUI's loras folder pointed at a temporary directory for the test."""
    import folder_paths

    saved = folder_paths.folder_names_and_paths["loras"]
    folder_paths.folder_names_and_paths["loras"] = ([str(tmp_path)], saved[1])
    yield tmp_path
    folder_paths.folder_names_and_paths["loras"] = saved
