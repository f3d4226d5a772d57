"""The fine-tuning loop: ViFi-CLIP's protocol with MAKA over action-conditioned prompts.

    result = train(TrainConfig(...), "runs/k400")              # or train(config, run, resume=True)

AdamW (betas 0.9/0.98, eps 1e-8, weight decay 0.001 on every parameter, as ViFi-CLIP's
build_optimizer), cosine schedule with linear warm-up from 0 to a floor of lr / 100 (timm
CosineLRScheduler with t_in_epochs=False, counted in optimizer updates), gradient accumulation,
soft-target cross-entropy with label smoothing and mixup/cutmix, AMP on CUDA (bf16 where supported,
else fp16 with a GradScaler), optional gradient checkpointing, and torchrun + DistributedDataParallel
(one process per GPU; rank 0 validates and writes).

Exact resume: the data order is drawn from (seed, epoch), each clip from (seed, epoch, index) and
each step's prompt subset and mixup/cutmix from (seed, epoch, step); the model, optimizer, scheduler
and scaler are saved at optimizer-update boundaries. An interrupted run (Ctrl-C) saves where the last update left it and
`resume=True` continues from there, so it reaches the same weights as an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from apclip.preprocessing import Preprocessing
from apclip.train import state as run_state
from apclip.train.config import TrainConfig
from apclip.train.data import (DataError, EpochSampler, TrainClips, collate_clips, few_shot_subset,
                               read_class_split, read_video_list, restrict_classes, single_threaded_worker)

Log = Callable[[str], None]


def lr_factor(update: int, total: int, warmup: int, floor: float) -> float:
    """timm CosineLRScheduler(t_initial=total, lr_min=floor * lr, warmup_lr_init=0, warmup_t=warmup)."""
    if update < warmup:
        return update / warmup
    if update >= total:
        return floor
    return floor + 0.5 * (1.0 - floor) * (1.0 + math.cos(math.pi * update / total))


@dataclass
class TrainResult:
    run: Path
    best_top1: float | None  # validation top-1 (percent) of best.pt; None without validation
    epochs: int
    updates: int
    skipped_videos: int
    clips_per_second: float  # training throughput of the last epoch (all processes)
    interrupted: bool = False
    main_process: bool = True  # rank 0 (the one that validates, writes and reports)


@dataclass
class _Distributed:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed() -> _Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return _Distributed(world, dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")))


def _amp(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed)."""
    mode = cfg.amp
    if mode not in ("auto", "off", "bf16", "fp16"):
        raise DataError(f"--amp {mode}: choose auto, off, bf16 or fp16")
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None, False
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "fp16" and device.type != "cuda":
        raise DataError("--amp fp16 needs a CUDA GPU (use --amp bf16 or off on CPU)")
    return (torch.bfloat16, False) if mode == "bf16" else (torch.float16, True)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class _Setup:
    """What a run reads and builds before its first step (the same on a fresh start and on resume)."""

    def __init__(self, cfg: TrainConfig, dist: _Distributed, log: Log) -> None:
        from apclip.labels import read_labels

        self.cfg = cfg
        if not cfg.train_list or not cfg.labels:
            raise DataError("training needs --train LIST and --labels FILE")
        self.all_labels = read_labels(cfg.labels)
        self.bank = None
        if cfg.prompts:
            from apclip.prompt_bank import load_prompt_bank

            self.bank = load_prompt_bank(cfg.prompts)
        items = read_video_list(cfg.train_list, cfg.root, len(self.all_labels))
        val = read_video_list(cfg.val_list, cfg.root, len(self.all_labels)) if cfg.val_list else []
        self.class_ids = (read_class_split(cfg.base_classes, self.all_labels) if cfg.base_classes
                          else list(range(len(self.all_labels))))
        if cfg.base_classes:  # train and validate on the base classes only, labels renumbered
            items, val = restrict_classes(items, self.class_ids), restrict_classes(val, self.class_ids)
        if cfg.shots:
            items = few_shot_subset(items, cfg.shots, cfg.seed)
        self.labels = [self.all_labels[i] for i in self.class_ids]
        self.items, self.val_items = items, val
        micro = (len(items) // dist.world) // cfg.batch_size
        self.updates_per_epoch = micro // cfg.accumulation
        if self.updates_per_epoch == 0:
            raise DataError(f"{len(items)} training videos are fewer than one optimizer update needs "
                            f"(batch {cfg.batch_size} x accumulation {cfg.accumulation} x {dist.world} process(es))")
        self.total_updates = cfg.epochs * self.updates_per_epoch
        self.warmup_updates = int(cfg.warmup_epochs * self.updates_per_epoch)
        self.model, self.profile, self.normalize, self.init_format = self._model(log)
        r = self.model.config.image_resolution
        try:
            # Validation (and best.pt, so export and apclip-eval) see frames the way the init checkpoint's code did.
            self.preprocessing = Preprocessing(frames=cfg.frames, clips=cfg.test_clips, crops=cfg.test_crops,
                                               resolution=r, normalization=self.normalize, profile=self.profile)
        except ValueError as exc:
            raise DataError(f"{exc} (set --profile, --normalize or --test-crops)") from None

    def _model(self, log: Log):
        from apclip.config import NORMALIZATIONS
        from apclip.preprocessing import LEGACY_PROFILE, PROFILE_NORMALIZATION, PROFILES

        cfg = self.cfg
        pre: dict[str, Any] = {}
        if cfg.init:
            from apclip.checkpoint import load_checkpoint

            checkpoint = load_checkpoint(cfg.init, base=cfg.base)
            model, fmt, pre = checkpoint.model, checkpoint.format, dict(checkpoint.preprocessing or {})
            log(f"fine-tuning {cfg.init} ({fmt})")
        elif cfg.model_preset:
            from apclip.model import build_preset

            model, fmt = build_preset(cfg.model_preset, seed=cfg.seed), f"preset:{cfg.model_preset}"
            log(f"training a random-init {cfg.model_preset} model")
        else:
            raise DataError("pass --init CHECKPOINT (e.g. OpenAI's ViT-B-16.pt) or --model-preset tiny")
        profile = cfg.profile or pre.get("profile") or LEGACY_PROFILE
        if profile not in PROFILES:
            raise DataError(f"--profile {profile}: choose one of {', '.join(PROFILES)}")
        default_norm = (pre.get("normalize") or "clip") if profile == LEGACY_PROFILE else PROFILE_NORMALIZATION[profile]
        normalize = cfg.normalize or default_norm
        if normalize not in NORMALIZATIONS:
            raise DataError(f"--normalize {normalize}: choose one of {', '.join(NORMALIZATIONS)}")
        return model.float(), profile, normalize, fmt

    def derived(self, dist: _Distributed) -> dict[str, Any]:
        return {"labels": self.labels, "all_labels": len(self.all_labels), "class_ids": self.class_ids,
                "train_videos": len(self.items), "val_videos": len(self.val_items),
                "updates_per_epoch": self.updates_per_epoch, "total_updates": self.total_updates,
                "warmup_updates": self.warmup_updates, "world_size": dist.world, "init_format": self.init_format,
                "effective_batch": self.cfg.batch_size * self.cfg.accumulation * dist.world,
                "preprocessing": self.preprocessing.to_dict(),
                "prompt_bank_sha256": self.bank.sha256 if self.bank is not None else None}


def train(cfg: TrainConfig, run: str | os.PathLike, *, resume: bool = False, progress: bool = True,
          device: str | None = None, log: Log = lambda m: print(m, file=sys.stderr),
          on_update: Callable[[int], None] | None = None) -> TrainResult:
    """Train into the run folder `run` (created), or continue it with resume=True (its config.json wins).

    on_update(update): called after every optimizer update (tests raise KeyboardInterrupt from it).
    Loader workers (cfg.workers > 0) are forked, PyTorch's default on Linux: call this from a fresh process
    (as apclip-train does); one that already ran multi-threaded native code can deadlock a forked worker."""
    from torch.utils.data import DataLoader

    from apclip.class_matrix import class_prompts
    from apclip.train.augment import TrainAugment
    from apclip.train.model import Blending, ClassPrompts, MakaClassifier, soft_cross_entropy

    run = Path(run)
    if resume:
        saved = run_state.read_config(run)
        cfg = TrainConfig.from_dict(saved["config"])
        snapshot = run_state.load_state(run)
    else:
        if (run / run_state.STATE_FILE).exists() or (run / run_state.CONFIG_FILE).exists():
            raise run_state.RunError(f"run folder {run} already holds a run: pass --resume to continue it, "
                                     "or choose another --output")
        foreign = [name for name in (run_state.BEST_FILE, run_state.LOG_FILE) if os.path.lexists(run / name)]
        if foreign:  # a best.pt this run did not write (no run config beside it): never overwritten
            raise run_state.RunError(f"run folder {run} already has {', '.join(foreign)} without a run config "
                                     f"({run_state.CONFIG_FILE}); it is not overwritten: choose another --output")
        snapshot = None
    dist = _init_distributed()
    dev = torch.device(device or (f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    elif cfg.workers > 0:
        # Leave the decoding workers their cores: oversubscribed intra-op threads spin and slow every step.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - cfg.workers))
    setup = _Setup(cfg, dist, log if dist.main else (lambda m: None))
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
        if not resume:
            run_state.write_config(run, {"config": cfg.to_dict(), "derived": setup.derived(dist),
                                         "tools": {"torch": torch.__version__, "numpy": np.__version__}})

    clip = setup.model.to(dev)
    for transformer in (clip.transformer, clip.visual.transformer):
        transformer.gradient_checkpointing = cfg.grad_checkpointing
    classifier = MakaClassifier(clip).train()
    model: torch.nn.Module = classifier
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(classifier, device_ids=[dev.index] if dev.type == "cuda" else None)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    total, warmup, floor = setup.total_updates, setup.warmup_updates, cfg.min_lr_ratio
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: lr_factor(u, total, warmup, floor))
    autocast_dtype, needs_scaler = _amp(cfg, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=needs_scaler)

    prompts = ClassPrompts.from_texts(class_prompts(setup.labels, setup.bank)[0])
    blend = Blending(len(setup.labels), cfg.label_smoothing, cfg.mixup, cfg.cutmix, cfg.mixup_switch_prob)
    epoch, batches_done, update, best = 0, 0, 0, None
    bad: set[int] = set()
    if snapshot is not None:
        clip.load_state_dict(snapshot["model"])
        optimizer.load_state_dict(snapshot["optimizer"])
        scheduler.load_state_dict(snapshot["scheduler"])
        if snapshot.get("scaler"):
            scaler.load_state_dict(snapshot["scaler"])
        torch.set_rng_state(snapshot["torch_rng"])
        epoch, batches_done, update = int(snapshot["epoch"]), int(snapshot["batches_done"]), int(snapshot["update"])
        best = snapshot.get("best_top1")
        bad = set(snapshot.get("bad", []))
        log(f"resuming {run} at epoch {epoch + 1}, update {update} of {total}")

    augment = TrainAugment(clip.config.image_resolution, setup.preprocessing.normalization, flip=cfg.flip,
                           color_jitter=cfg.color_jitter, gray_scale=cfg.gray_scale)
    dataset = TrainClips(setup.items, cfg.frames, augment, cfg.seed)
    sampler = EpochSampler(len(dataset), seed=cfg.seed, num_replicas=dist.world, rank=dist.rank)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.workers, collate_fn=collate_clips, persistent_workers=cfg.workers > 0,
                        pin_memory=dev.type == "cuda", worker_init_fn=single_threaded_worker)
    json_log = run_state.JsonLog(run / run_state.LOG_FILE, enabled=dist.main)
    from tqdm import tqdm

    bar = tqdm(total=total, initial=update, desc="training", unit="update", file=sys.stderr, dynamic_ncols=True,
               disable=not (progress and dist.main))
    boundary: dict[str, Any] = {}

    def mark_boundary() -> None:
        """Remember what a resume from the current update would need (cheap: no tensors copied)."""
        boundary.update(epoch=epoch, batches_done=batches_done, update=update, torch_rng=torch.get_rng_state())

    def save(position: dict[str, Any]) -> None:
        if not dist.main:
            return
        run_state.save_state(run, {
            "model": clip.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if needs_scaler else None, "epoch": position["epoch"],
            "batches_done": position["batches_done"], "update": position["update"], "best_top1": best,
            "torch_rng": position["torch_rng"],
            "bad": sorted(bad), "config": cfg.to_dict()})

    mark_boundary()
    interrupted = False
    clips_per_second = 0.0
    accum = cfg.accumulation
    micro_per_epoch = setup.updates_per_epoch * accum
    try:
        while epoch < cfg.epochs:
            sampler.set_epoch(epoch, skip=batches_done * cfg.batch_size)
            t_epoch, clips, losses, correct, seen = time.perf_counter(), 0, [], 0, 0
            window_t, window_clips = time.perf_counter(), 0
            group_has_data = False
            for batch in loader:
                if batches_done >= micro_per_epoch:
                    break  # leftover micro-batches that cannot fill an update (ViFi-CLIP drops them too)
                bad.update(batch["bad"])
                last_micro = (batches_done + 1) % accum == 0
                if batch["video"] is not None:
                    videos = batch["video"].to(dev, non_blocking=True)  # [B, T, 3, R, R]
                    labels = batch["label"].to(dev)
                    # Stateless generators per micro-batch: nothing to save, the same after a resume. The
                    # prompt subset is the same on every rank (one subset per step), blending is per rank.
                    prompt_rng = np.random.default_rng([cfg.seed, 1, epoch, batches_done])
                    blend_rng = np.random.default_rng([cfg.seed, 2, epoch, batches_done, dist.rank])
                    sync = contextlib.nullcontext() if last_micro or dist.world == 1 else model.no_sync()
                    with sync:
                        with _autocast(dev, autocast_dtype):
                            videos, targets = blend(videos, labels, blend_rng)
                            logits = model(videos, prompts.sample(cfg.prompts_per_class, prompt_rng))
                            loss = soft_cross_entropy(logits, targets)
                        scaler.scale(loss / accum).backward()
                    losses.append(float(loss.detach()))
                    correct += int((logits.detach().argmax(dim=1) == labels).sum())
                    seen += len(labels)
                    clips += len(labels)
                    window_clips += len(labels)
                    group_has_data = True
                batches_done += 1
                if not last_micro:
                    continue
                lr = optimizer.param_groups[0]["lr"]  # the rate this update uses
                if group_has_data:
                    scaler.step(optimizer)
                    scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                update += 1
                group_has_data = False
                mark_boundary()
                bar.update(1)
                if losses:
                    bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}")
                if update % cfg.log_every == 0 and losses:
                    elapsed = time.perf_counter() - window_t
                    json_log.write({"event": "update", "epoch": epoch + 1, "update": update,
                                    "loss": float(np.mean(losses[-cfg.log_every * accum:])),
                                    "lr": lr, "train_top1": 100.0 * correct / max(1, seen),
                                    "clips_per_s": window_clips * dist.world / max(elapsed, 1e-9),
                                    "memory_mb": run_state.memory_mb(dev), "skipped_videos": len(bad)})
                    window_t, window_clips = time.perf_counter(), 0
                if on_update is not None:
                    on_update(update)
            train_seconds = time.perf_counter() - t_epoch
            clips_per_second = clips * dist.world / max(train_seconds, 1e-9)
            epoch, batches_done = epoch + 1, 0
            mark_boundary()
            val_top1 = None
            if dist.main:
                val_top1 = _validate(classifier, setup, dev, cfg.workers) if setup.val_items else None
                improved = val_top1 is not None and (best is None or val_top1 > best)
                if improved or not setup.val_items:
                    best = val_top1 if improved else best
                    _save_best(run / run_state.BEST_FILE, clip, setup, cfg, epoch, val_top1)
                json_log.write({"event": "epoch", "epoch": epoch, "update": update,
                                "loss": float(np.mean(losses)) if losses else None,
                                "train_top1": 100.0 * correct / max(1, seen), "val_top1": val_top1,
                                "best_top1": best, "lr": optimizer.param_groups[0]["lr"],
                                "clips_per_s": clips_per_second, "train_seconds": train_seconds,
                                "memory_mb": run_state.memory_mb(dev), "skipped_videos": len(bad),
                                "skipped_paths": [str(setup.items[i].path) for i in sorted(bad)[:20]]})
                val_text = f"val top-1 {val_top1:.2f}%, " if val_top1 is not None else ""
                line = (f"epoch {epoch}/{cfg.epochs}: loss {np.mean(losses) if losses else float('nan'):.4f}, "
                        f"{val_text}{clips_per_second:.1f} clips/s, skipped videos {len(bad)}")
                bar.write(line, file=sys.stderr) if not bar.disable else log(line)
            save(boundary)
            if dist.world > 1:
                torch.distributed.barrier()
    except KeyboardInterrupt:
        interrupted = True
        save(boundary)  # the state after the last complete update: --resume continues exactly
        log(f"interrupted: saved {run / run_state.STATE_FILE} at update {boundary['update']}; "
            f"continue with apclip-train --output {run} --resume")
    finally:
        bar.close()
        json_log.close()
        if dist.world > 1:
            torch.distributed.destroy_process_group()
    return TrainResult(run, best, epoch, update, len(bad), clips_per_second, interrupted, dist.main)


def _validate(classifier, setup: _Setup, dev: torch.device, workers: int) -> float:
    """Validation top-1 (percent), scored exactly as apclip-eval --ckpt scores best.pt."""
    from apclip.train.eval import build_report, compile_classes, score_with_model

    clip = classifier.clip
    was_training = clip.training
    clip.eval()
    try:
        with torch.inference_mode():
            classes = compile_classes(clip, setup.labels, setup.bank)
        scored = list(score_with_model(clip, setup.val_items, setup.preprocessing, classes, workers=workers,
                                       device=str(dev)))
    finally:
        clip.train(was_training)
    return build_report(scored, setup.labels).top1


def _save_best(path: Path, clip, setup: _Setup, cfg: TrainConfig, epoch: int, val_top1: float | None) -> None:
    from apclip.checkpoint import save_checkpoint

    pre = setup.preprocessing
    save_checkpoint(path, clip, labels=setup.all_labels,
                    preprocessing={"profile": pre.profile, "normalize": pre.normalization.name, "frames": pre.frames,
                                   "clips": pre.clips, "crops": pre.crops},
                    prompt_bank_sha256=setup.bank.sha256 if setup.bank is not None else None,
                    train_config={**cfg.to_dict(), "epoch": epoch, "val_top1": val_top1,
                                  "trained_labels": setup.labels})
