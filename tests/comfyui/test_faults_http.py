"""Fault injection against a real ComfyUI server over HTTP (issue 13): a server killed mid-save and
restarted, a full disk (a size-limited tmpfs mounted in the loras folder), Cancel while encoding,
training and sampling, two runs queued at once, and the inputs that used to fail only at the save.
After each: nothing under a final name is partial, nothing existing is replaced, the server still
answers, and the message names the input or the file (never the server's paths)."""

import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from safetensors.torch import load_file

from labtest.server import ComfyServer, PromptRejected, execution_error
from labtest.workflows import NETWORK_DEFAULTS, SAMPLES_DEFAULTS, SAVE_DEFAULTS, load_dataset_node, training_prompt


class Holder:
    """The module's server; a test that kills it starts a new one on the same folders."""

    def __init__(self, comfy_dir, base):
        self.comfy_dir, self.base = comfy_dir, base
        self.srv = ComfyServer(comfy_dir, base).start()

    def restart(self):
        self.srv.stop()
        self.srv = ComfyServer(self.comfy_dir, self.base).start()
        return self.srv


@pytest.fixture(scope="module")
def holder(comfy_dir, tmp_path_factory):
    h = Holder(comfy_dir, tmp_path_factory.mktemp("faults-base"))
    yield h
    h.srv.stop()


@pytest.fixture
def srv(holder):
    if not holder.srv.alive():
        holder.restart()
    return holder.srv


def unique(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def loras(srv) -> Path:
    return srv.base / "models" / "loras"


def error_of(srv, prompt) -> str:
    entry = srv.run(prompt, timeout=300)
    error = execution_error(entry)
    assert error is not None, "the prompt should have failed"
    assert srv.alive() and srv.get("/api/system_stats")
    message = error["exception_message"]
    assert str(srv.base) not in message, message  # no server path for a remote client
    return message


def assert_nothing_partial(folder: Path, name: str = ""):
    """Every file under a final name (of this run's name) loads completely."""
    for path in sorted(folder.rglob(f"{name}*")):
        if path.suffix in (".safetensors", ".trainstate") and path.is_file():
            tensors = load_file(str(path))
            assert tensors or path.suffix == ".trainstate", path


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def run_log(srv, node="5"):
    return srv.get(f"/loralab/runs/{node}")


def wait_for(condition, timeout=180.0, what="condition", srv=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}\n{srv.log_tail() if srv else ''}")


def new_run(srv, before):
    """The Train node's run log once a run newer than `before` is in the state asked for."""
    def check():
        log = run_log(srv)
        return log if log and (before is None or log["run"] != before) else None
    return check


# --- inputs that used to fail only at the save --------------------------------------------------------

def test_a_long_output_name_is_refused_before_training(srv):
    """Defect 1: ~240 characters trained every step, then OSError 36 at the save's temporary name."""
    name = "n" * 236
    message = error_of(srv, training_prompt("SD1.5", name, steps=3))
    assert message.startswith("output_name:") and "file-name limit" in message
    assert not list(loras(srv).rglob("n" * 50 + "*"))


def test_a_precision_outside_the_list_is_refused_before_training(srv):
    """Defect 2: 'fp64' (0.3.64 does not check V3 combos) trained, then KeyError at the save."""
    name = unique("fp64")
    try:
        message = error_of(srv, training_prompt("SD1.5", name, steps=3, save={**SAVE_DEFAULTS, "precision": "fp64"}))
        assert "precision: 'fp64' is not one of" in message
    except PromptRejected as rejected:  # 0.33 validates combos itself
        assert "precision" in str(rejected.answer)
    assert not list(loras(srv).rglob(f"{name}*"))


def test_a_subfolder_linking_outside_is_refused_and_nothing_is_written_there(srv, tmp_path):
    """Defect 10: Save subfolder="linkout" (a symlink to a folder outside) wrote the LoRA outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    link = loras(srv) / f"linkout_{uuid.uuid4().hex[:6]}"
    link.symlink_to(outside, target_is_directory=True)
    message = error_of(srv, training_prompt("SD1.5", unique("link"), steps=2,
                                            save={**SAVE_DEFAULTS, "subfolder": link.name}))
    assert message.startswith("subfolder:") and "leads outside the loras folder" in message
    assert list(outside.iterdir()) == []


def test_hidden_names_and_dot_subfolders_are_refused(srv):
    """Defect 11: `.hidden` made hidden files; `./.` wrote to the loras root."""
    message = error_of(srv, training_prompt("SD1.5", ".hidden", steps=2))
    assert "output name" in message and "must not start with '.'" in message
    message = error_of(srv, training_prompt("SD1.5", unique("dot"), steps=2, save={**SAVE_DEFAULTS, "subfolder": "./."}))
    assert message.startswith("subfolder") and "must not start with '.'" in message
    assert not list(loras(srv).glob("dot_*"))


def test_a_custom_path_outside_the_roots_names_the_rule_not_the_roots(srv, tmp_path):
    """Defect 11: errors shown to remote clients listed the server's allowed dataset roots."""
    prompt = {"1": load_dataset_node(custom_path=str(tmp_path)),
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 2]}}}
    message = error_of(srv, prompt)
    assert message.startswith("custom_path:") and "dataset_roots" in message
    assert str(srv.base / "input") not in message


def test_a_truncated_training_state_is_a_named_error(srv):
    """Defect 8: a truncated .trainstate raised SafetensorError 'file not fully covered'."""
    name = unique("trunc")
    save = {**SAVE_DEFAULTS, "every_n_steps": 2}
    assert execution_error(srv.run(training_prompt("SD1.5", name, steps=3, save=save))) is None
    state = loras(srv) / "loralab" / f"{name}-step000002.trainstate"
    state.write_bytes(state.read_bytes()[:-64])
    message = error_of(srv, training_prompt("SD1.5", unique("resume"), steps=3,
                                            save={**save, "resume_from": f"loralab/{state.name}"}))
    assert message.startswith("resume_from:") and state.name in message and "truncated" in message


def test_continue_from_with_another_rank_says_both_ranks(srv):
    """Defect 8: 'expected [the same list]' never said rank 16 against 8."""
    name = unique("rank8")
    assert execution_error(srv.run(training_prompt("SD1.5", name, steps=1,
                                                   network={**NETWORK_DEFAULTS, "rank": 8, "alpha": 8.0}))) is None
    network = {**NETWORK_DEFAULTS, "rank": 4, "alpha": 4.0, "continue_from": f"loralab/{name}.safetensors"}
    try:
        message = error_of(srv, training_prompt("SD1.5", unique("rank4"), steps=1, network=network))
    except PromptRejected:  # the combo lists files at load time on some versions: use the path input
        pytest.skip("continue_from combo not refreshed")
    assert message.startswith("continue_from:") and "rank 8 in the file, 4 here" in message


# --- names of an earlier run, interrupted files ------------------------------------------------------

def test_a_repeated_name_with_earlier_periodic_files_is_refused_before_training(srv):
    """Defect 4: re-running a cancelled name stopped at step 2 with FileExistsError."""
    name = unique("again")
    folder = loras(srv) / "loralab"
    folder.mkdir(parents=True, exist_ok=True)
    earlier = folder / f"{name}-step000002.safetensors"
    earlier.write_bytes(b"an earlier run's periodic save")
    save = {**SAVE_DEFAULTS, "every_n_steps": 2}
    message = error_of(srv, training_prompt("SD1.5", name, steps=5, save=save))
    assert message.startswith(f"output_name: loralab/{earlier.name}") and "allow overwriting" in message
    assert run_log(srv)["steps"] == []  # refused before the first step
    assert earlier.read_bytes() == b"an earlier run's periodic save"
    entry = srv.run(training_prompt("SD1.5", name, steps=5, save={**save, "overwrite": True}))
    assert execution_error(entry) is None, execution_error(entry)
    assert_nothing_partial(folder, name)


def test_resume_from_an_older_state_than_the_newest_periodic_save(srv):
    """Defect 4: resuming from a state older than the newest periodic file failed at its first step;
    keep_last now counts the periodic saves made before the resume."""
    name, full = unique("older"), unique("whole")
    folder = loras(srv) / "loralab"
    save = {**SAVE_DEFAULTS, "every_n_steps": 2}
    assert execution_error(srv.run(training_prompt("SD1.5", full, steps=8, save=SAVE_DEFAULTS))) is None
    prompt = training_prompt("SD1.5", name, steps=8, save=save)
    assert execution_error(srv.run(prompt)) is None
    (folder / f"{name}.safetensors").unlink()  # as if the run had been killed after its step-6 save
    resume = {**save, "resume_from": f"loralab/{name}-step000002.trainstate"}
    message = error_of(srv, training_prompt("SD1.5", name, steps=8, save=resume))
    assert message.startswith(f"output_name: loralab/{name}-step000004.safetensors") and "resumed run" in message
    entry = srv.run(training_prompt("SD1.5", name, steps=8, save={**resume, "overwrite": True, "keep_last": 2}))
    assert execution_error(entry) is None, execution_error(entry)
    assert sorted(p.name for p in folder.glob(f"{name}-step*.safetensors")) == [
        f"{name}-step000004.safetensors", f"{name}-step000006.safetensors"]
    assert sorted(p.name for p in folder.glob(f"{name}-step*.trainstate")) == [
        f"{name}-step000004.trainstate", f"{name}-step000006.trainstate"]
    a, b = load_file(folder / f"{full}.safetensors"), load_file(folder / f"{name}.safetensors")
    assert all(a[k].equal(b[k]) for k in a)  # resumed from step 2: bitwise the uninterrupted run


def test_two_runs_queued_at_once_with_one_name_never_replace(srv):
    name = unique("twice")
    first = srv.queue(training_prompt("SD1.5", name, steps=6))
    second = srv.queue(training_prompt("SD1.5", name, steps=7))  # not identical: ComfyUI would reuse the first
    assert execution_error(srv.wait(first)) is None
    path = loras(srv) / "loralab" / f"{name}.safetensors"
    before = path.read_bytes()
    error = execution_error(srv.wait(second))
    assert error is not None and error["exception_message"].startswith(f"output_name: loralab/{name}.safetensors")
    assert path.read_bytes() == before and srv.alive()


# --- Cancel at each stage -----------------------------------------------------------------------------

def test_cancel_while_encoding_writes_nothing(srv):
    name = unique("enc")
    before = (run_log(srv) or {}).get("run")
    prompt = training_prompt("SD1.5", name, steps=2, size=512)
    prompt["2"]["inputs"]["batch_size"] = 96  # 96 images of 512x512: encoding takes many seconds
    prompt["4"]["inputs"]["mask"] = None
    del prompt["4"]["inputs"]["mask"]
    prompt_id = srv.queue(prompt)
    wait_for(new_run(srv, before), what="the run to start", srv=srv)
    srv.post("/interrupt", {})
    entry = srv.wait(prompt_id, timeout=300)
    log = run_log(srv)
    assert log["status"] == "interrupted" and log["steps"] == [], "the Cancel landed after encoding"
    assert entry["status"]["status_str"] == "error"
    assert not list(loras(srv).rglob(f"{name}*")) and srv.alive()


def test_cancel_while_training_never_replaces_an_earlier_interrupted_file(srv):
    """Defect 3: two cancelled runs at the same step replaced each other's files."""
    name = unique("cancel")
    folder = loras(srv) / "loralab"
    folder.mkdir(parents=True, exist_ok=True)
    for step in range(1, 61):  # an earlier cancelled run at every step this one may stop at
        (folder / f"{name}_interrupted_{step}.safetensors").write_bytes(b"earlier lora")
        (folder / f"{name}_interrupted_{step}.trainstate").write_bytes(b"earlier state")
    planted = snapshot(folder)
    before = (run_log(srv) or {}).get("run")
    prompt_id = srv.queue(training_prompt("SD1.5", name, steps=60, network=NETWORK_DEFAULTS))
    wait_for(lambda: (lambda log: log and log["run"] != before and len(log["steps"]) >= 2)(run_log(srv)),
             what="two steps", srv=srv)
    srv.post("/interrupt", {})
    srv.wait(prompt_id, timeout=120)
    step = run_log(srv)["steps"][-1]["step"]
    assert all(path.read_bytes() == data for path, data in planted.items() if path.name.startswith(name))
    new = folder / f"{name}_interrupted_{step}-1.safetensors"
    assert new.is_file() and new.with_suffix(".trainstate").is_file(), sorted(os.listdir(folder))[-5:]
    assert load_file(str(new))


def test_cancel_while_sampling_stops_sampling_then_saves(srv):
    """Defect 5: Cancel during sampling waited for every sampling step (24.5 s); now the sampler
    stops at its next step and the interrupted save follows (no samples of that step are kept)."""
    name = unique("sampcancel")
    samples = {**SAMPLES_DEFAULTS, "steps": 200, "width": 512, "height": 512, "every_n_steps": 2,
               "sample_at_start": False}
    before = (run_log(srv) or {}).get("run")
    prompt_id = srv.queue(training_prompt("SD1.5", name, steps=4, samples=samples))
    wait_for(lambda: (lambda log: log and log["run"] != before and len(log["steps"]) >= 2)(run_log(srv)),
             what="step 2 (sampling starts)", srv=srv)
    time.sleep(0.5)  # well inside 2 x 200 sampling steps at 512x512
    cancelled = time.monotonic()
    srv.post("/interrupt", {})
    srv.wait(prompt_id, timeout=300)
    took = time.monotonic() - cancelled
    log = run_log(srv)
    assert log["status"] == "interrupted" and [s["step"] for s in log["steps"]] == [1, 2]
    assert log["samples"] == [], "sampling ran to its end before the Cancel was honoured"
    interrupted = loras(srv) / "loralab" / f"{name}_interrupted_2.safetensors"
    assert interrupted.is_file() and load_file(str(interrupted)), sorted(os.listdir(interrupted.parent))
    assert took < 60, took


# --- a full disk ----------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(srv):
    """An 8 MB tmpfs mounted as a subfolder of the loras folder (needs root, as CI runs)."""
    mount = loras(srv) / f"small_{uuid.uuid4().hex[:6]}"
    mount.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        mount.rmdir()
        pytest.skip(f"SKIPPED LOUDLY: cannot mount a small tmpfs for the full-disk test ({result.stderr.strip()}); "
                    f"run as root (CI does)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
    mount.rmdir()


def test_a_full_disk_fails_cleanly_naming_the_file(srv, small_disk):
    name = unique("full")
    save = {**SAVE_DEFAULTS, "subfolder": small_disk.name, "every_n_steps": 1}
    network = {**NETWORK_DEFAULTS, "rank": 16, "alpha": 16.0}
    message = error_of(srv, training_prompt("SD1.5", name, steps=200, save=save, network=network))
    assert message.startswith(f"save: cannot write {small_disk.name}/{name}-step") and "No space left" in message
    left = os.listdir(small_disk)
    assert not [n for n in left if n.endswith(".tmp")], left
    assert_nothing_partial(small_disk)
    assert len(left) >= 2  # some periodic saves fitted before the disk was full


def test_not_enough_space_for_one_save_is_refused_before_training(srv, small_disk):
    (small_disk / "filler.bin").write_bytes(b"\0" * (7 * 2**20 + 512 * 1024))
    name = unique("nospace")
    message = error_of(srv, training_prompt("SD1.5", name, steps=3, save={**SAVE_DEFAULTS, "subfolder": small_disk.name}))
    assert message.startswith("save:") and f"free where {small_disk.name} is" in message
    assert not list(small_disk.glob(f"{name}*"))  # refused before encoding


# --- a server killed mid-save --------------------------------------------------------------------------

def test_a_server_killed_mid_save_leaves_no_partial_file_and_the_next_run_cleans_up(holder):
    srv = holder.srv if holder.srv.alive() else holder.restart()
    name = unique("killed")
    folder = loras(srv) / "killtest"
    folder.mkdir(parents=True, exist_ok=True)
    stale = folder / ".planted.99999999.abcdefgh.tmp"  # a pid that cannot exist (above Linux's limit)
    stale.write_bytes(b"left by an earlier kill")
    network = {**NETWORK_DEFAULTS, "rank": 64, "alpha": 64.0}
    save = {**SAVE_DEFAULTS, "subfolder": "killtest", "every_n_steps": 1, "save_training_state": True}
    seen = threading.Event()

    def watch():
        while not seen.is_set():
            for entry in os.scandir(folder):
                if entry.name.startswith(f".{name}") and entry.name.endswith(".tmp"):
                    os.kill(srv.process.pid, signal.SIGKILL)
                    seen.set()
                    return
            if not srv.alive():
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    srv.queue(training_prompt("Flux", name, steps=400, save=save, network=network))
    watcher.join(timeout=240)
    seen.set()
    srv.process.wait(timeout=30)
    assert srv.process.returncode == -signal.SIGKILL, "the watcher never saw a save's temporary file"
    assert_nothing_partial(folder)  # atomic writes: a kill leaves at most a temporary file
    srv = holder.restart()
    assert srv.get("/api/system_stats")
    entry = srv.run(training_prompt("SD1.5", unique("after"), steps=2, save={**SAVE_DEFAULTS, "subfolder": "killtest"}))
    assert execution_error(entry) is None, execution_error(entry)
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")], os.listdir(folder)
