"""One training run of the LoRALab Train node: encode the dataset once, train the adapter on a
patcher-scoped clone of the MODEL, save on the chosen cadence, report progress, honour Cancel."""

from __future__ import annotations

import dataclasses
import html
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..training import lora_file
from ..masking.ops import fill_background
from ..training.buckets import assign_bucket, fit_to_bucket
from ..training.captions import prepare as prepare_captions
from ..training.dataset import Dataset
from ..training.image_io import load_sample_pixels
from ..training.loop import LoopConfig, NonFiniteLoss, Sample, StepRecord, Trainer
from ..training.objective import Flow
from ..training.loss_chart import as_image_batch
from ..training.loss_chart import render as render_loss_chart
from ..training.loss_chart import smoothed
from ..training.masked_loss import pool_to_latent
from ..training.network import (EXTRA_NETWORK_ARGS, LYCORIS_ALGO, NETWORK_MODULE, AdapterNetwork, AdapterSet,
                                NetworkConfig)
from ..training.optimizers import build_optimizer
from ..training.run_metadata import settings_metadata
from ..training.save_plan import SavePlan
from ..training.schedulers import build_scheduler
from ..training.settings import NetworkSettings, ObjectiveSettings, OptimizerSettings, SampleSettings, SaveSettings
from ..training.train_state import SUFFIX as STATE_SUFFIX
from ..training.train_state import load_state, save_state
from . import host, run_log
from .host import folders as host_folders

PREVIEW_EVERY = 10  # steps between loss-chart previews (rendering is cheap, but not free)
CAPTION_VARIANTS = 8  # pre-drawn caption variants per sample whose encodings are cached


@dataclass
class RunResult:
    lora_path: Path
    tensors: dict
    history: list[dict]
    saved: list[str] = field(default_factory=list)
    samples: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (step, images)
    text_encoder_trained: bool = False
    sample_files: list[dict] = field(default_factory=list)  # {step, images: [{filename, subfolder, type}]}


@dataclass(frozen=True)
class RunRequest:
    model: object
    clip: object
    vae: object
    dataset: Dataset
    steps: int
    learning_rate: float
    seed: int
    output_name: str
    network: NetworkSettings
    optimizer: OptimizerSettings
    objective: ObjectiveSettings
    save: SaveSettings
    samples: SampleSettings | None = None
    node_id: str | None = None
    memory_budget: int | None = None  # bytes of the model's weights on the device (tests, benchmarks); None: memory_mode


def _crop_to_multiple(image: torch.Tensor, multiple: int = 16) -> torch.Tensor:
    """Centre crop so the latent is whole and its patches tile it (`host.pixel_multiple`)."""
    h, w = image.shape[:2]
    nh, nw = h - h % multiple, w - w % multiple
    if nh == 0 or nw == 0:
        raise ValueError(f"an image of {w}x{h} pixels is too small to train on (at least {multiple}x{multiple})")
    top, left = (h - nh) // 2, (w - nw) // 2
    return image[top:top + nh, left:left + nw]


def _training_pixels(dataset: Dataset, item, multiple: int = 16) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sample's image and loss weight at the size it trains at: its bucket, or (datasets
    built from in-memory images) its own size cropped to a multiple of `multiple` (the model's
    `host.pixel_multiple`)."""
    image, weight, _ = load_sample_pixels(item)
    if dataset.masked_fill is not None and weight is not None:
        image = fill_background(image, weight, "colour", dataset.masked_fill)
    if dataset.buckets is not None:
        size = (int(image.shape[1]), int(image.shape[0]))
        return fit_to_bucket(image, weight, assign_bucket(size, dataset.buckets))
    image = _crop_to_multiple(image, multiple)
    return image, None if weight is None else _crop_to_multiple(weight.unsqueeze(-1), multiple)[..., 0]


def encode_samples(req: RunRequest, cache_captions: bool = True, progress=None) -> list[Sample]:
    """Latents through the given VAE (then the model's latent scaling; the mirrored image too when
    flips are on), masks pooled to the latent grid, and K pre-drawn caption variants per sample
    encoded once per distinct text (kept as text when the text encoder trains: encoded every
    step)."""
    dataset = req.dataset
    prepared = prepare_captions(dataset.caption_policy, dataset) if dataset.caption_policy is not None else None
    if req.clip is None and (prepared is not None or any(s.caption for s in dataset.samples)):
        raise ValueError("clip: the dataset has captions but no CLIP is connected")
    cache: dict[str, object] = {}

    def cond_of(text: str):
        if cache_captions and text not in cache:
            cache[text] = host.encode_caption(req.clip, text)
        return cache[text] if cache_captions else text

    def encode(image, weight):
        latent = host.encode_images(req.vae, req.model, image.unsqueeze(0))[0].float().cpu()
        pooled = None if weight is None else pool_to_latent(weight[None, None], tuple(latent.shape[1:]))[0]
        return latent, pooled

    multiple = host.pixel_multiple(req.model)
    if dataset.buckets is not None and dataset.buckets.step % multiple:
        raise ValueError(f"bucket_step {dataset.buckets.step}: this model trains on image sides that are "
                         f"multiples of {multiple} (its VAE's downscale times its patch size)")
    samples = []
    for index, item in enumerate(dataset.samples):
        if host.interrupted():
            raise host.interrupt_exception()
        if progress is not None:
            progress.text(f"encoding the dataset: {index + 1}/{len(dataset.samples)}")
        image, weight = _training_pixels(dataset, item, multiple)
        latent, pooled = encode(image, weight)
        flipped = None
        if dataset.flip and item.flip_allowed:
            flipped = encode(image.flip(1), None if weight is None else weight.flip(1))
        texts = prepared.variants(index, k=CAPTION_VARIANTS, seed=req.seed) if prepared else [item.caption]
        conds = tuple(cond_of(text) for text in texts)
        samples.append(Sample(latent=latent, weight=pooled, cond=conds[0], repeats=item.repeats, flipped=flipped,
                              cond_variants=conds if len(conds) > 1 else ()))
    return samples


def _network_args(req: RunRequest) -> dict:
    cfg = req.network.network
    args = {"preset": req.network.preset}
    if cfg.algorithm in LYCORIS_ALGO:
        args.update(algo=LYCORIS_ALGO[cfg.algorithm], conv_dim=str(cfg.conv_rank), conv_alpha=str(cfg.conv_alpha))
    args.update(EXTRA_NETWORK_ARGS.get(cfg.algorithm, {}))
    if cfg.dropout:
        args["dropout"] = str(cfg.dropout)
    return args


def _progress_text(record: StepRecord, total: int, losses: list[float], started: float, start_step: int) -> str:
    done = record.step - start_step
    rate = done / max(time.monotonic() - started, 1e-9)
    eta = (total - record.step) / rate if rate > 0 else 0.0
    text = (f"step {record.step}/{total} · epoch {record.epoch + 1} · loss {smoothed(losses)[-1]:.4f} · "
            f"lr {record.lr:.2e} · {rate:.2f} it/s · ETA {int(eta // 60)}:{int(eta % 60):02d}")
    return html.escape(text)


class _Saver:
    """Writes the adapter (final, periodic, interrupted) under the loras folder, atomically, to the
    names its SavePlan decided and checked before training."""

    def __init__(self, req: RunRequest, profile, flow: bool, network: AdapterSet):
        self.req, self.profile, self.network = req, profile, network
        save = req.save
        self.plan = SavePlan.create(host.loras_folder(), save.subfolder, req.output_name, req.steps, save.overwrite,
                                    save.save_state, save.keep_last, save.precision)
        self.name, self.folder, self.final = self.plan.name, self.plan.folder, self.plan.final
        self.periodic: list[Path] = []
        self.due: set[int] = set()
        self.tag_frequency = _tag_frequency(req.dataset)
        self.settings = settings_metadata(optimizer=req.optimizer, objective=req.objective, network=req.network,
                                          dataset=req.dataset, steps=req.steps, flow=flow,
                                          resume_from=req.save.resume_from)
        if (self.final.exists() or self.final.is_symlink()) and not save.overwrite:
            raise FileExistsError(f"output_name: {self.plan.shown(self.final)} already exists in the loras folder; "
                                  f"choose another name or allow overwriting in the save settings")
        numel = sum(p.numel() for p in network.parameters()) + sum(b.numel() for b in network.buffers())
        itemsize = torch.empty((), dtype=lora_file.SAVE_DTYPES[save.precision]).element_size()
        self.plan.check_space(numel * itemsize, numel * 4 * 4)  # state: weights + up to 3 optimizer tensors

    def prepare(self, trainer: Trainer, start_step: int) -> None:
        """Before the first step: the periodic saves this run will make, none of which may replace
        a file without overwrite; leftovers of killed saves removed; a resumed run's earlier
        periodic saves counted by keep_last."""
        spe, per_epoch, accum = trainer.steps_per_epoch, trainer.order.batches_per_epoch, trainer.config.grad_accum
        self.due = {s for s in range(start_step + 1, self.req.steps)
                    if self.req.save.due(s, s % spe == 0, (s * accum - 1) // per_epoch)}
        self.plan.clean_leftovers()
        self.plan.check_clashes(sorted(self.due), resumed=start_step > 0)
        if start_step > 0:
            self.periodic = self.plan.earlier_periodic(start_step)

    def metadata(self, step: int, epoch: int, resolution: str) -> dict:
        req, cfg = self.req, self.req.network.network
        base_model_version, architecture = self.profile.names(req.model)
        return lora_file.build_metadata(lora_file.TrainingFacts(
            base_model_version=base_model_version, architecture=architecture,
            implementation=self.profile.implementation, output_name=self.name, network_module=NETWORK_MODULE[cfg.algorithm], rank=cfg.rank,
            alpha=cfg.alpha, network_args=_network_args(req), steps=step, epoch=epoch,
            learning_rate=req.learning_rate, optimizer=req.optimizer.optimizer, resolution=resolution,
            seed=req.seed, clip_skip=host.clip_skip(req.clip) if req.clip is not None else None,
            text_encoder_lr=req.optimizer.text_encoder_lr, tag_frequency=self.tag_frequency, settings=self.settings))

    def _guarded(self, path: Path, write):
        """Runs a write; its failure names the file relative to the loras folder."""
        try:
            return write()
        except FileExistsError:
            raise FileExistsError(f"output_name: {self.plan.shown(path)} already exists in the loras folder (it "
                                  f"appeared during the run); choose another name or allow overwriting") from None
        except OSError as error:
            reason = error.strerror or str(error)  # never error.filename: a server path
            if reason.startswith("cannot write "):
                reason = reason.split(": ", 1)[-1]
            raise OSError(f"save: cannot write {self.plan.shown(path)} in the loras folder: {reason}") from None

    def write(self, path: Path, step: int, epoch: int, resolution: str, overwrite: bool) -> dict:
        dtype = lora_file.SAVE_DTYPES[self.req.save.precision]
        tensors = self.network.file_state_dict(dtype)
        self._guarded(path, lambda: lora_file.write_atomic(path, tensors, self.metadata(step, epoch, resolution),
                                                           overwrite=overwrite))
        return tensors

    def write_state(self, lora_path: Path, trainer: Trainer, step: int, overwrite: bool) -> None:
        if self.req.save.save_state:
            state = lora_path.with_suffix(STATE_SUFFIX)
            self._guarded(state, lambda: save_state(state, self.network, trainer.optimizer, trainer.scheduler, step,
                                                    fingerprint(self.req, trainer), overwrite=overwrite))

    def interrupted_path(self, step: int) -> Path:
        """`<name>_interrupted_<step>`, or with a new `-N` suffix when that name (or its training
        state) exists: an earlier cancelled run's files are never replaced."""
        return self.plan.interrupted(step)

    def save_interrupted(self, trainer: Trainer, step: int, epoch: int, resolution: str) -> Path:
        path = self.interrupted_path(step)
        self.write(path, step, epoch, resolution, overwrite=False)
        self.write_state(path, trainer, step, overwrite=False)
        return path

    def periodic_save(self, trainer: Trainer, step: int, epoch: int, resolution: str) -> Path:
        path = self.plan.periodic(step)
        self.write(path, step, epoch, resolution, overwrite=self.req.save.overwrite)
        self.write_state(path, trainer, step, overwrite=self.req.save.overwrite)
        self.periodic.append(path)
        keep = self.req.save.keep_last
        while keep and len(self.periodic) > keep:
            old = self.periodic.pop(0)
            old.with_suffix(STATE_SUFFIX).unlink(missing_ok=True)  # the state first: never one without its LoRA
            old.unlink(missing_ok=True)
        return path


def _tag_frequency(dataset: Dataset) -> dict:
    """kohya's ss_tag_frequency: per concept, how many captions carry each tag."""
    if dataset.caption_policy is not None:
        return prepare_captions(dataset.caption_policy, dataset).tag_frequency
    frequency: dict[str, dict[str, int]] = {}
    for sample in dataset.samples:
        counts = frequency.setdefault(sample.concept, {})
        for tag in {t.strip() for t in sample.caption.split(",") if t.strip()}:
            counts[tag] = counts.get(tag, 0) + 1
    return frequency


def fingerprint(req: RunRequest, trainer: Trainer) -> dict:
    """The settings a resumed run must share with the saved one for the result to be exact."""
    net, opt = req.network, req.optimizer
    return {"seed": req.seed, "steps": req.steps, "learning_rate": req.learning_rate,
            "algorithm": net.network.algorithm, "rank": net.network.rank, "alpha": net.network.alpha,
            "conv_rank": net.network.conv_rank, "preset": net.preset, "optimizer": opt.optimizer,
            "optimizer_args": opt.optimizer_args, "scheduler": opt.scheduler, "batch_size": opt.batch_size,
            "grad_accum": opt.grad_accum, "text_encoder_lr": opt.text_encoder_lr,
            "samples": [list(s.latent.shape) + [s.repeats] for s in trainer.samples]}


class _Reporter:
    """Everything the user sees of a run: ComfyUI's progress bar with a preview (the latest
    sample, else the loss chart), the progress text, and `loralab.progress` events plus the
    server-side run log that the canvas chart draws from."""

    def __init__(self, req: RunRequest):
        self.req = req
        self.progress = host.Progress(req.steps, req.node_id)
        self.log = run_log.start(req.node_id or "", req.steps)
        self.started = time.monotonic()
        self.start_step = 0
        self.cancel_requested = False
        self._event("start", step=0)

    def _event(self, kind: str, **data) -> None:
        host.emit({"type": kind, "run": self.log.run_id, "node": self.log.node_id, "total": self.req.steps, **data})

    def resumed(self, step: int) -> None:
        self.start_step = step
        self.progress.update(step)
        self.started = time.monotonic()

    def memory(self, state: str, mode: str) -> None:
        """Which memory mode ran: in the run log, the server log and the progress text."""
        self.log.memory = state
        logging.info("LoRA Lab: model memory %s (memory_mode %s)", state, mode)
        self.progress.text(html.escape(f"model memory: {state} (memory_mode {mode})"))
        self._event("memory", step=self.start_step, memory=state)

    def samples(self, step: int, images: torch.Tensor, name: str) -> None:
        entries = host.save_temp_images(images, f"loralab/{name}_step{step:06d}")
        self.log.samples.append({"step": step, "images": entries})
        self._event("samples", step=step, images=entries)

    def step(self, record: StepRecord, saved_now: bool) -> None:
        entry = {"step": record.step, "epoch": record.epoch, "loss": record.loss, "lr": record.lr, "sigma": record.sigma}
        self.log.steps.append(entry)
        if saved_now:
            self.log.saves.append(record.step)
        losses = [h["loss"] for h in self.log.steps]
        text = _progress_text(record, self.req.steps, losses, self.started, self.start_step)
        self.progress.text(text)
        self._event("step", **entry, saved=saved_now, text=text)
        preview = None
        if record.step % PREVIEW_EVERY == 0 or record.step == self.req.steps:
            preview = render_loss_chart(losses, self.log.saves)
        self._update(record.step, preview)

    def preview(self, step: int, sampled: torch.Tensor) -> None:
        """The step's first sample as the node's preview."""
        self._update(step, _to_pil(sampled[0]))

    def _update(self, step: int, preview) -> None:
        try:
            self.progress.update(step, preview)
        except host.interrupt_types():  # the server's interrupt hook raises inside the progress bar
            self.cancel_requested = True

    def should_stop(self) -> bool:
        return self.cancel_requested or host.interrupted()

    def end(self, status: str) -> None:
        self.log.status = status
        self._event("end", step=self.log.steps[-1]["step"] if self.log.steps else self.start_step, status=status)


def run(req: RunRequest) -> RunResult:
    if req.steps < 1:
        raise ValueError(f"steps must be at least 1, not {req.steps}")
    if not req.learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, not {req.learning_rate}")
    profile = host.profile_of(req.model)
    family = host.prediction_family(req.model)
    # adapters, training and samples on the modules that will run (a dynamic patcher's delegate)
    req = dataclasses.replace(req, model=host.training_base(req.model))
    if isinstance(family, Flow):  # the one shift: the Objective's, by default the model's own
        timesteps = req.objective.flow_timesteps.resolved(host.sampling_shift(req.model), profile.flow_default)
        req = dataclasses.replace(req, objective=dataclasses.replace(req.objective, flow_timesteps=timesteps))
        logging.info("LoRA Lab: %s (%s)", timesteps.describe(), profile.name)
    obj, opt = req.objective, req.optimizer
    loop_config = LoopConfig(
        steps=req.steps, batch_size=opt.batch_size, grad_accum=opt.grad_accum, seed=req.seed,
        max_grad_norm=opt.max_grad_norm, scale_weight_norms=opt.scale_weight_norms, loss=obj.loss,
        reduction=obj.reduction, huber_delta=obj.huber_delta, unmasked_weight=obj.unmasked_weight, snr=obj.snr,
        flow_timesteps=obj.flow_timesteps, noise_offset=obj.noise_offset)
    loop_config.validate(family)  # before any encoding: a wrong option fails fast
    networks, text_encoder = build_networks(req, profile)
    saver = _Saver(req, profile, isinstance(family, Flow), networks)
    if req.samples is not None and req.clip is None:
        raise ValueError("clip: sample images need the CLIP to encode their prompts")
    report = _Reporter(req)
    try:
        result = _train(req, loop_config, networks, text_encoder, saver, report)
    except BaseException as error:
        report.end("interrupted" if isinstance(error, host.interrupt_types()) else "error")
        raise
    report.end("success")
    return result


def _train(req: RunRequest, loop_config: LoopConfig, networks: AdapterSet, text_encoder, saver: "_Saver",
           report: _Reporter) -> RunResult:
    opt, obj = req.optimizer, req.objective
    samples = encode_samples(req, cache_captions=text_encoder is None, progress=report.progress)
    down = host.latent_downscale(req.model)
    resolution = ",".join(f"{s.latent.shape[-1] * down}x{s.latent.shape[-2] * down}" for s in samples[:1])
    history: list[dict] = []
    saved: list[str] = []
    taken: list[tuple[int, torch.Tensor]] = []

    def take_samples(step: int, model) -> torch.Tensor:
        prompts = req.samples.resolved_prompts(req.dataset.trigger)
        clip = text_encoder.clip if text_encoder is not None else req.clip  # the trained one, adapters attached
        images = host.sample_images(req.model, networks["unet"], clip, req.vae, prompts, req.samples)
        model.reload()
        taken.append((step, images))
        report.samples(step, images, saver.name)
        return images

    if text_encoder is None:  # encodings cached: the encoders leave the device while the model trains
        host.offload_from_device(req.clip, req.vae)
    latent_shape = (opt.batch_size, *samples[0].latent.shape) if samples else None
    with host.TrainingModel(req.model, networks["unet"], opt.gradient_checkpointing, obj.training_guidance,
                            text_encoder, memory_mode=opt.memory_mode, memory_budget=req.memory_budget,
                            keep_activations_blocks=opt.keep_activations_blocks, latent_shape=latent_shape) as model:
        report.memory(model.memory, opt.memory_mode)
        optimizer = build_optimizer(opt.optimizer, _param_groups(networks, req), req.learning_rate, opt.optimizer_args)
        scheduler = build_scheduler(opt.scheduler, optimizer, req.steps, opt.warmup_steps, opt.num_cycles)
        trainer = Trainer(model, list(networks.parameters()), samples, loop_config, optimizer, scheduler, networks)
        start_step = 0
        if req.save.resume_from:
            try:
                start_step = load_state(host.find_state_file(req.save.resume_from), networks, optimizer, scheduler,
                                        fingerprint(req, trainer))
            except ValueError as error:
                raise ValueError(f"resume_from: {error}") from None
            report.resumed(start_step)
        saver.prepare(trainer, start_step)
        if req.samples is not None and req.samples.at_start:
            take_samples(start_step, model)

        def on_step(record: StepRecord) -> None:
            history.append({"step": record.step, "epoch": record.epoch, "loss": record.loss, "lr": record.lr,
                            "sigma": record.sigma})
            saved_now = record.step == req.steps or record.step in saver.due
            if saved_now and record.step < req.steps:
                saved.append(str(saver.periodic_save(trainer, record.step, record.epoch, resolution)))
            report.step(record, saved_now)  # logged before sampling: a Cancel there keeps this step
            if req.samples is not None and req.samples.due(record.step, saved_now, final=record.step == req.steps):
                report.preview(record.step, take_samples(record.step, model))

        try:
            outcome = trainer.run(start_step, on_step, report.should_stop, interrupts=host.interrupt_types())
        except NonFiniteLoss as error:
            last = saved[-1] if saved else "none was saved yet"
            raise ValueError(f"{error}. Last good checkpoint: {last}. Lower the learning rate or check the data.") from None
        if outcome.interrupted:
            if outcome.step > start_step:
                saver.save_interrupted(trainer, outcome.step, history[-1]["epoch"], resolution)
            raise host.interrupt_exception()
        epoch = history[-1]["epoch"] if history else 0
        tensors = saver.write(saver.final, outcome.step, epoch, resolution, overwrite=req.save.overwrite)
    saved.append(str(saver.final))
    return RunResult(lora_path=saver.final, tensors=tensors, history=history, saved=saved, samples=taken,
                     text_encoder_trained=text_encoder is not None, sample_files=report.log.samples)


def build_networks(req: RunRequest, profile):
    """The diffusion model's adapter network, and the text encoder's (with the CLIP clone that
    trains it) when a text-encoder learning rate is set."""
    settings = req.network
    networks = AdapterSet({"unet": AdapterNetwork(host.target_modules(req.model, settings.preset), settings.network,
                                                  seed=req.seed)})
    text_encoder = None
    if req.optimizer.text_encoder_lr > 0:
        if req.clip is None:
            raise ValueError("clip: text-encoder training (text_encoder_lr > 0) needs the CLIP connected")
        te_config = NetworkConfig(settings.network.algorithm, settings.network.rank, settings.network.alpha,
                                  dropout=settings.network.dropout)
        networks["te"] = AdapterNetwork(host.text_encoder_targets(req.clip, profile), te_config, seed=req.seed + 1)
        text_encoder = host.TrainingTextEncoder(req.clip, networks["te"])
    if settings.continue_from:
        path = host.find_lora(settings.continue_from)
        shown = host_folders.lora_display_name(path)
        try:
            tensors = lora_file.read_lora(path)
            for network in networks.values():
                network.load_file_state_dict(tensors, shown)
        except ValueError as error:
            text = str(error).replace(path.name, shown, 1) if shown not in str(error) else str(error)
            raise ValueError(f"continue_from: {text}") from None
    return networks, text_encoder


def _param_groups(networks: AdapterSet, req: RunRequest) -> list[dict]:
    groups = [{"params": list(networks["unet"].parameters()), "lr": req.learning_rate}]
    if "te" in networks:
        groups.append({"params": list(networks["te"].parameters()), "lr": req.optimizer.text_encoder_lr})
    return groups


def _to_pil(image: torch.Tensor):
    from PIL import Image

    return Image.fromarray((image.clamp(0, 1) * 255).round().byte().numpy())


def output_images(result: RunResult) -> torch.Tensor:
    """The samples in the order taken, or the loss chart when there are none (IMAGE layout)."""
    if result.samples:
        return torch.cat([images for _, images in result.samples])
    return as_image_batch(render_loss_chart([h["loss"] for h in result.history]))
