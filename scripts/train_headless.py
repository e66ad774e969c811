#!/usr/bin/env python3
"""Headless LoRA training through a real ComfyUI: the single-image masked example workflow
(example_workflows/flux_single_image_masked_lora.json), queued over HTTP.

    python scripts/train_headless.py                      # smoke run: bundled image, tiny demo Flux
    python scripts/train_headless.py --unet flux1-dev.safetensors --clip-l clip_l.safetensors \\
        --t5 t5xxl_fp16.safetensors --vae ae.safetensors --image me.png --trigger ohwx

It reuses a ComfyUI at --url, or starts one from --comfyui (default: $COMFYUI_PATH, ../.. when this
pack sits in custom_nodes/, ~/comfy/ComfyUI) on a free loopback port with --cpu unless --gpu.
Step, loss and ETA stream to the terminal; the saved LoRA's path is printed last; any failure
exits non-zero. `--write-workflow FILE` writes the example as a UI workflow instead of running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]
SAMPLE_IMAGE = PACK / "example_workflows" / "lora_lab_sample_subject.png"
WORKFLOW_NOTE = (
    "Single-image masked Flux LoRA (LoRA Lab).\n"
    "LoadImage: an image whose transparent background is left out of the loss (its MASK is 1 - alpha, hence "
    "mask_meaning 'LoadImage alpha'). Change: the image, the trigger word, the caption describing everything "
    "but the subject, and the model files. Rank 4 and 400 steps at 512 px follow seed 003; saves and samples "
    "every 100 steps (and at step 0) let you pick the checkpoint that has learned the subject before it "
    "overfits.")


# --- the example graph (API format) ---------------------------------------------------------

def example_prompt(args) -> dict:
    """The single-image masked Flux example; with no --unet, the tiny demo Flux (a smoke run)."""
    prompt: dict[str, dict] = {}
    if args.unet:
        prompt["1"] = {"class_type": "UNETLoader", "inputs": {"unet_name": args.unet, "weight_dtype": "default"}}
        prompt["2"] = {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": args.clip_l, "clip_name2": args.t5,
                                                                  "type": "flux", "device": "default"}}
        prompt["3"] = {"class_type": "VAELoader", "inputs": {"vae_name": args.vae}}
        model, clip, vae = ["1", 0], ["2", 0], ["3", 0]
    else:
        prompt["1"] = {"class_type": "LoRALabDemoModel", "inputs": {"family": "Flux", "weight_dtype": "bf16", "seed": 0}}
        model, clip, vae = ["1", 0], ["1", 1], ["1", 2]
    prompt.update({
        "4": {"class_type": "LoadImage", "inputs": {"image": args.image_name}},
        "5": {"class_type": "LoRALabDatasetFromImages", "inputs": {
            "images": ["4", 0], "mask": ["4", 1], "mask_meaning": "LoadImage alpha", "captions": args.caption,
            "trigger": args.trigger, "repeats": 1}},
        "6": {"class_type": "LoRALabNetwork", "inputs": {
            "algorithm": "LoRA", "rank": args.rank, "alpha": float(args.rank), "conv_rank": 0, "conv_alpha": 1.0,
            "dropout": 0.0, "target_preset": "attention+mlp", "continue_from": "none"}},
        "7": {"class_type": "LoRALabSave", "inputs": {
            "every_n_steps": args.save_every, "every_n_epochs": 0, "keep_last": 0, "precision": "bf16",
            "subfolder": "loralab", "overwrite": args.overwrite, "save_training_state": True, "resume_from": "none"}},
        "8": {"class_type": "LoRALabSamples", "inputs": {
            "prompts": "{trigger}, standing in a park\n{trigger}, portrait, studio light", "negative": "",
            "sampler": "euler", "scheduler": "simple", "steps": args.sample_steps, "cfg": 1.0, "guidance": 3.5,
            "seed": 42, "width": args.sample_size, "height": args.sample_size, "every_n_steps": 0,
            "sample_at_start": True}},
        "9": {"class_type": "LoRALabTrain", "inputs": {
            "model": model, "clip": clip, "vae": vae, "dataset": ["5", 0], "steps": args.steps,
            "learning_rate": args.lr, "seed": args.seed, "output_name": args.name, "network": ["6", 0],
            "save": ["7", 0], "samples": ["8", 0]}},
        "10": {"class_type": "LoRALabLossChart", "inputs": {"loss_history": ["9", 2], "width": 768, "height": 384,
                                                            "log_scale": False}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["9", 3], "filename_prefix": "loralab/samples"}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "loralab/loss"}},
    })
    return prompt


# --- API prompt -> UI workflow (what users open and share) ---------------------------------

def _is_widget(spec) -> bool:
    kind = spec[0]
    # A forceInput input (e.g. Network's continue_from_path) is a socket in the frontend, with no widget.
    return (isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")) \
        and not (len(spec) > 1 and spec[1].get("forceInput"))


def to_ui_workflow(prompt: dict, object_info: dict, note: str) -> dict:
    """Widget values in each node definition's input order (as the frontend stores them), links
    for socket inputs, and a Note node explaining the workflow."""
    ids = {key: i + 1 for i, key in enumerate(prompt)}
    nodes, links = [], []
    outputs: dict[tuple[int, int], list[int]] = {}
    for key, node in prompt.items():
        info = object_info[node["class_type"]]
        order = info.get("input_order", {})
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        widgets, inputs = [], []
        for name in order.get("required", []) + order.get("optional", []):
            value = node["inputs"].get(name)
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                link_id = len(links) + 1
                source = ids[value[0]]
                kind = object_info[prompt[value[0]]["class_type"]]["output"][value[1]]
                links.append([link_id, source, value[1], ids[key], len(inputs), kind])
                outputs.setdefault((source, value[1]), []).append(link_id)
                inputs.append({"name": name, "type": kind if not _is_widget(specs[name]) else specs[name][0]
                               if isinstance(specs[name][0], str) else "COMBO", "link": link_id})
            elif _is_widget(specs[name]):
                widgets.append(value)
                options = specs[name][1] if len(specs[name]) > 1 else {}
                if options.get("image_upload"):
                    widgets.append("image")  # the upload button is a widget too
                # The frontend adds a control widget to seeds unless the node says otherwise.
                if options.get("control_after_generate", specs[name][0] == "INT" and name in ("seed", "noise_seed")):
                    widgets.append("fixed")
        nodes.append({"id": ids[key], "type": node["class_type"], "pos": [40 + 340 * ((ids[key] - 1) % 4),
                                                                          40 + 320 * ((ids[key] - 1) // 4)],
                      "size": [320, 260], "flags": {}, "order": ids[key] - 1, "mode": 0, "inputs": inputs,
                      "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets})
    for node in nodes:
        info = object_info[node["type"]]
        node["outputs"] = [{"name": name, "type": kind, "links": outputs.get((node["id"], slot), []), "slot_index": slot}
                           for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"]))]
    note_id = len(nodes) + 1
    nodes.append({"id": note_id, "type": "Note", "pos": [40, -260], "size": [660, 220], "flags": {}, "order": note_id - 1,
                  "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [note]})
    return {"last_node_id": note_id, "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


# --- talking to ComfyUI -----------------------------------------------------------------------

def _http(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 60):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def find_comfyui() -> Path | None:
    for candidate in (os.environ.get("COMFYUI_PATH"), PACK.parent.parent, Path.home() / "comfy" / "ComfyUI"):
        if candidate and (Path(candidate) / "main.py").is_file() and (Path(candidate) / "comfy").is_dir():
            return Path(candidate).resolve()
    return None


def start_comfyui(comfy: Path, gpu: bool) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, str(comfy / "main.py"), "--listen", "127.0.0.1", "--port", str(port)] + ([] if gpu else ["--cpu"])
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"loralab-comfyui-{port}.log", "wb")
    process = subprocess.Popen(cmd, cwd=comfy, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"ComfyUI exited with {process.returncode}; see {log.name}")
        try:
            _http(url + "/api/system_stats", timeout=2)
            print(f"started ComfyUI at {url} (log: {log.name})", file=sys.stderr)
            return process, url
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    process.terminate()
    raise SystemExit(f"ComfyUI did not start within 180 s; see {log.name}")


def upload_image(url: str, path: Path) -> str:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + path.read_bytes() + \
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n--{boundary}--\r\n".encode()
    answer = _http(url + "/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]


async def stream_until_done(url: str, client_id: str, prompt: dict) -> dict:
    """Queues the prompt and prints the train node's progress text until the prompt ends."""
    import aiohttp  # ComfyUI's own dependency

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url.replace('http', 'ws', 1)}/ws?clientId={client_id}") as ws:
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as response:
                answer = await response.json()
                if response.status != 200:
                    raise SystemExit(f"ComfyUI refused the workflow: {json.dumps(answer)[:2000]}")
            prompt_id = answer["prompt_id"]
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY and struct.unpack(">I", message.data[:4])[0] == 3:
                    size = struct.unpack(">I", message.data[4:8])[0]
                    print("\r" + message.data[8 + size:].decode().replace("&lt;", "<").replace("&amp;", "&"),
                          end="", file=sys.stderr, flush=True)
                elif message.type == aiohttp.WSMsgType.TEXT:
                    event = json.loads(message.data)
                    data = event.get("data", {})
                    if data.get("prompt_id") != prompt_id:
                        continue
                    if event["type"] in ("execution_error", "execution_interrupted"):
                        print(file=sys.stderr)
                        raise SystemExit(f"training failed: {data.get('exception_message', event['type'])}")
                    if event["type"] == "executing" and data.get("node") is None:
                        break
    print(file=sys.stderr)
    return _http(f"{url}/history/{prompt_id}")[prompt_id]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running ComfyUI to use (default: start one)")
    p.add_argument("--comfyui", type=Path, help="ComfyUI folder to start (default: found automatically)")
    p.add_argument("--gpu", action="store_true", help="start ComfyUI without --cpu")
    p.add_argument("--unet", help="Flux diffusion model file in models/diffusion_models (default: tiny demo model)")
    p.add_argument("--clip-l", default="clip_l.safetensors", help="CLIP-L file in models/text_encoders")
    p.add_argument("--t5", default="t5xxl_fp16.safetensors", help="T5-XXL file in models/text_encoders")
    p.add_argument("--vae", default="ae.safetensors", help="Flux VAE file in models/vae")
    p.add_argument("--image", type=Path, default=SAMPLE_IMAGE, help="training image; transparency = left out of the loss")
    p.add_argument("--trigger", default="lrlb", help="trigger word")
    p.add_argument("--caption", default="a cartoon figure with a yellow hat, red sweater and blue trousers",
                   help="caption (describe everything you want to stay changeable)")
    p.add_argument("--steps", type=int, help="training steps (default: 400, or 30 for the smoke run)")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--name", default=None, help="LoRA file name (default: lora_lab_<time>; my_flux_lora in a written workflow)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--write-workflow", type=Path, help="write the example as a UI workflow JSON and exit")
    args = p.parse_args(argv)
    smoke = args.unet is None
    args.steps = args.steps or (30 if smoke else 400)
    args.sample_steps, args.sample_size = (4, 256) if smoke else (20, 512)
    if smoke:
        args.lr = 1e-3
        args.save_every = min(args.save_every, 10)
    args.name = args.name or ("my_flux_lora" if args.write_workflow else f"lora_lab_{time.strftime('%Y%m%d_%H%M%S')}")
    args.image_name = args.image.name
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    process = None
    try:
        if args.url:
            url = args.url.rstrip("/")
        else:
            comfy = args.comfyui or find_comfyui()
            if comfy is None:
                raise SystemExit("no ComfyUI found: pass --url or --comfyui, or set COMFYUI_PATH")
            process, url = start_comfyui(comfy, args.gpu)
        if args.write_workflow:
            workflow = to_ui_workflow(example_prompt(args), _http(url + "/object_info"), WORKFLOW_NOTE)
            args.write_workflow.write_text(json.dumps(workflow, indent=1) + "\n")
            print(args.write_workflow)
            return 0
        if args.unet is None:
            print("smoke run: tiny random-weight demo Flux (pass --unet/--clip-l/--t5/--vae for a real run)", file=sys.stderr)
        args.image_name = upload_image(url, args.image)
        entry = asyncio.run(stream_until_done(url, uuid.uuid4().hex, example_prompt(args)))
        if entry.get("status", {}).get("status_str") != "success":
            raise SystemExit(f"training failed: {json.dumps(entry.get('status'))[:2000]}")
        result = entry["outputs"]["9"]
        print(result["text"][0], file=sys.stderr)
        print(result["lora_path"][0])
        return 0
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
