"""The up-front plan of every file a run writes (issue 13): what can fail at a save is refused before
the first step, names the input and the file relative to the loras folder, and never replaces a file."""

import os

import pytest
import torch
from safetensors.torch import save_file

from comfyui_lora_lab.training import lora_file
from comfyui_lora_lab.training.lora_file import read_lora, remove_stale_temporaries, write_atomic
from comfyui_lora_lab.training.save_plan import SavePlan
from comfyui_lora_lab.training.train_state import load_state, save_state


def plan(root, name="my_lora", subfolder="loralab", steps=100, overwrite=False, keep_last=0, precision="bf16"):
    return SavePlan.create(root, subfolder, name, steps, overwrite, True, keep_last, precision)


def test_an_output_name_too_long_for_its_suffixes_is_refused_up_front(tmp_path):
    """Defect 1: ~232-243 characters passed, trained, then failed at the temporary file's name."""
    with pytest.raises(ValueError, match=r"output_name: .* bytes long; .* use at most \d+ bytes") as caught:
        plan(tmp_path, "a" * 235)
    assert str(tmp_path) not in str(caught.value)
    allowed = int(str(caught.value).rsplit("at most ", 1)[1].split()[0])
    assert not _fits(tmp_path, "a" * (allowed + 1))
    p = plan(tmp_path, "a" * allowed, steps=100)  # the longest accepted name writes every kind of file
    for path in (p.final, p.periodic(99), p.folder / f"{p.name}_interrupted_100-9999.safetensors"):
        write_atomic(path, {"w": torch.zeros(1)}, {})
        write_atomic(path.with_suffix(".trainstate"), {"w": torch.zeros(1)}, {})


def _fits(root, name):
    try:
        plan(root, name)
        return True
    except ValueError:
        return False


def test_a_precision_outside_the_list_is_refused_up_front(tmp_path):
    """Defect 2: 'fp64' trained 30 steps, then KeyError at the save."""
    with pytest.raises(ValueError, match="precision: 'fp64' is not one of fp32, bf16, fp16"):
        plan(tmp_path, precision="fp64")


@pytest.mark.parametrize("name", [".hidden", ".x.safetensors"])
def test_hidden_output_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="must not start with '.'"):
        plan(tmp_path, name)


@pytest.mark.parametrize("subfolder", ["./.", ".", ".hidden", "a/.b"])
def test_dot_and_hidden_subfolders_are_refused(tmp_path, subfolder):
    with pytest.raises(ValueError, match="subfolder .*must not start with '.'"):
        plan(tmp_path, subfolder=subfolder)


def test_a_subfolder_name_over_the_limit_is_refused_naming_the_input(tmp_path):
    with pytest.raises(ValueError, match=r"subfolder: the folder name .* is 300 bytes long; .* at most 255") as caught:
        plan(tmp_path, subfolder="s" * 300)
    assert str(tmp_path) not in str(caught.value)


def test_a_subfolder_that_links_outside_the_loras_folder_is_refused(tmp_path):
    """Defect 10: Save subfolder="linkout" (a symlink to a folder outside) wrote outside."""
    root, outside = tmp_path / "loras", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "linkout").symlink_to(outside, target_is_directory=True)
    (root / "linkin").symlink_to(root / "real", target_is_directory=True)
    (root / "real").mkdir()
    with pytest.raises(ValueError, match="subfolder: 'linkout' leads outside the loras folder"):
        plan(root, subfolder="linkout")
    with pytest.raises(ValueError, match="leads outside"):
        plan(root, subfolder="linkout/deeper")
    assert plan(root, subfolder="linkin").folder == root / "linkin"  # a link that stays inside is fine


def test_files_of_an_earlier_run_are_refused_before_training_unless_overwrite(tmp_path):
    """Defect 4: a repeated name stopped at step 2 with FileExistsError; a resume from an older state
    failed at its first step. Now: refused before the first step, naming the file; or overwritten."""
    p = plan(tmp_path)
    p.folder.mkdir(parents=True)
    p.periodic(4).write_bytes(b"earlier run")
    with pytest.raises(FileExistsError, match=r"output_name: loralab/my_lora-step000004.safetensors already exist.*"
                                              r"earlier run"):
        p.check_clashes([2, 4, 6], resumed=False)
    with pytest.raises(FileExistsError, match="resumed run writes the saves after its state's step again"):
        p.check_clashes([4, 6], resumed=True)
    p.check_clashes([6, 8], resumed=True)  # saves up to the resumed step are not written again
    plan(tmp_path, overwrite=True).check_clashes([2, 4, 6], resumed=False)
    assert p.periodic(4).read_bytes() == b"earlier run"


def test_interrupted_files_never_replace_an_earlier_one(tmp_path):
    """Defect 3: two cancelled runs at the same step replaced each other's files."""
    p = plan(tmp_path, overwrite=True)
    p.folder.mkdir(parents=True)
    first = p.interrupted(7)
    assert first.name == "my_lora_interrupted_7.safetensors"
    first.write_bytes(b"first")
    second = p.interrupted(7)
    assert second.name == "my_lora_interrupted_7-1.safetensors"
    (p.folder / "my_lora_interrupted_7-1.trainstate").write_bytes(b"an orphan state counts too")
    assert p.interrupted(7).name == "my_lora_interrupted_7-2.safetensors"


def test_earlier_periodic_saves_of_a_resumed_run_are_counted(tmp_path):
    """Defect 9: keep_last ignored periodic files made before a resume."""
    p = plan(tmp_path, keep_last=2)
    p.folder.mkdir(parents=True)
    for step in (2, 4, 6, 8):
        p.periodic(step).write_bytes(b"x")
    (p.folder / "my_lora_v2-step000002.safetensors").write_bytes(b"another name")
    assert [x.name for x in p.earlier_periodic(6)] == [f"my_lora-step00000{s}.safetensors" for s in (2, 4, 6)]


def test_not_enough_space_is_refused_up_front_naming_the_folder(tmp_path):
    p = plan(tmp_path)
    with pytest.raises(OSError, match=r"save: .* free where loralab is, but one save of this run needs about"):
        p.check_space(1 << 60, 0)
    p.check_space(1024, 1024)


def test_a_killed_save_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    """Defect 9: `.tmp` files of a save cut by kill -9 were never removed."""
    pid = os.fork()
    if pid == 0:  # a process killed while writing: it never reaches its clean-up
        def killed(data, filename, metadata=None):
            open(filename, "wb").write(b"half a file")
            os._exit(9)
        lora_file.save_file = killed
        write_atomic(tmp_path / "a.safetensors", {"w": torch.zeros(1)}, {})
        os._exit(0)
    os.waitpid(pid, 0)
    left = [n for n in os.listdir(tmp_path)]
    assert len(left) == 1 and left[0].startswith(".a.") and left[0].endswith(".tmp")
    mine = tmp_path / f".b.{os.getpid()}.abcdefgh.tmp"  # a write in progress in a live process stays
    mine.write_bytes(b"in progress")
    (tmp_path / "notes.tmp").write_bytes(b"not ours")
    assert remove_stale_temporaries(tmp_path) == left
    assert sorted(os.listdir(tmp_path)) == sorted([mine.name, "notes.tmp"])


def test_the_move_into_place_never_replaces_a_file_that_appeared(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    real_save = lora_file.save_file

    def racing(data, filename, metadata=None):
        real_save(data, filename, metadata=metadata)
        path.write_bytes(b"another run's file")  # appears between the check and the move

    monkeypatch.setattr(lora_file, "save_file", racing)
    with pytest.raises(FileExistsError, match="a.safetensors already exists"):
        write_atomic(path, {"w": torch.zeros(1)}, {})
    assert path.read_bytes() == b"another run's file" and os.listdir(tmp_path) == ["a.safetensors"]


def test_a_full_disk_names_the_file_not_the_server_path(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    def full(data, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")

    monkeypatch.setattr(lora_file, "save_file", full)
    with pytest.raises(OSError, match="cannot write a.safetensors") as caught:
        write_atomic(tmp_path / "a.safetensors", {"w": torch.zeros(1)}, {})
    assert str(tmp_path) not in str(caught.value) and os.listdir(tmp_path) == []


def test_truncated_files_are_named_errors(tmp_path):
    """Defect 8: raw SafetensorError ... file not fully covered."""
    lora = write_atomic(tmp_path / "l.safetensors", {"w": torch.zeros(1000)}, {})
    lora.write_bytes(lora.read_bytes()[:-100])
    with pytest.raises(ValueError, match="l.safetensors cannot be read .*truncated") as caught:
        read_lora(lora)
    assert str(tmp_path) not in str(caught.value)
    net = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(net.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = save_state(tmp_path / "s.trainstate", net, opt, sched, 3, {"seed": 0})
    state.write_bytes(state.read_bytes()[:-10])
    with pytest.raises(ValueError, match="s.trainstate cannot be read .*truncated"):
        load_state(state, net, opt, sched, {"seed": 0})


def test_a_state_is_not_replaced_without_overwrite(tmp_path):
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    path = tmp_path / "s.trainstate"
    path.write_bytes(b"an earlier run's state")
    with pytest.raises(FileExistsError):
        save_state(path, net, opt, sched, 1, {})
    assert path.read_bytes() == b"an earlier run's state"
    save_state(path, net, opt, sched, 1, {}, overwrite=True)
