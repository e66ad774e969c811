"""A real ComfyUI server for end-to-end tests: `main.py --cpu` on a free loopback port, with
isolated base/user/output/temp/database directories and only this pack in its custom_nodes
folder (a symlink, so nothing of ComfyUI is copied into the repo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from . import PACK_ROOT

PACK_DIR_NAME = "comfyui-lora-lab"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def prepare_base_dir(base: Path) -> Path:
    for sub in ("custom_nodes", "user", "input", "output", "temp", "models/loras"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_DIR_NAME
    if not link.exists():
        link.symlink_to(PACK_ROOT, target_is_directory=True)
    return base


def comfy_command(comfy_dir: Path, base: Path, *extra: str) -> list[str]:
    return [sys.executable, str(comfy_dir / "main.py"), "--cpu",
            "--base-directory", str(base), "--user-directory", str(base / "user"),
            "--database-url", f"sqlite:///{base / 'comfyui.db'}",
            "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_DIR_NAME, *extra]


class ComfyServer:
    def __init__(self, comfy_dir: Path, base: Path, env: dict | None = None, extra_args: tuple[str, ...] = ()):
        self.comfy_dir = Path(comfy_dir)
        self.extra_args = tuple(extra_args)
        self.base = prepare_base_dir(Path(base))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "server.log"
        self.client_id = uuid.uuid4().hex
        self._env = env
        self.process: subprocess.Popen | None = None

    # --- life cycle ---
    def start(self, timeout: float = 120.0) -> "ComfyServer":
        cmd = comfy_command(self.comfy_dir, self.base, "--listen", "127.0.0.1", "--port", str(self.port),
                            *self.extra_args)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=server_env(self._env))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/api/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # --- HTTP ---
    def _request(self, path: str, data: dict | None = None, timeout: float = 30.0):
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body,
                                     headers={"Content-Type": "application/json"} if body else {})
        with urllib.request.urlopen(req, timeout=timeout) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def get(self, path: str):
        return self._request(path)

    def post(self, path: str, data: dict):
        return self._request(path, data)

    def queue(self, prompt: dict) -> str:
        """POSTs an API-format prompt; returns its id. A validation error raises PromptRejected."""
        try:
            answer = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as e:
            raise PromptRejected(json.loads(e.read() or b"{}")) from None
        if answer.get("node_errors"):  # some outputs failed validation: ComfyUI would run only the rest
            raise PromptRejected(answer)
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """Waits for the prompt to finish; returns its history entry (status and outputs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if not self.alive():
                raise RuntimeError(f"ComfyUI died while running the prompt:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 300.0) -> dict:
        return self.wait(self.queue(prompt), timeout)


class PromptRejected(Exception):
    def __init__(self, answer: dict):
        super().__init__(json.dumps(answer)[:2000])
        self.answer = answer


def refusal(server: ComfyServer, prompt: dict) -> str:
    """Why a prompt failed: the node's error when it ran, or ComfyUI's validation answer when it
    refused the prompt up front (ComfyUI 0.33 checks V3 combo values before any node runs; 0.3.64
    leaves them to the node)."""
    try:
        entry = server.run(prompt)
    except PromptRejected as refused:
        return str(refused)
    error = execution_error(entry)
    assert error is not None, "the prompt should have failed"
    return error["exception_message"]


def execution_error(entry: dict) -> dict | None:
    """The `execution_error` message of a history entry, or None when the prompt succeeded."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None
