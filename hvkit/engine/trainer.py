"""The training loop every training stage shares.

A stage supplies the modules to train, a ``batches(epoch)`` iterator, a
``step(batch, generator) -> loss | (loss, {name: value})`` function and optionally an
``after_step(steps_done)`` callback run after each optimiser step (a momentum teacher's
update); the trainer owns the optimiser and scheduler, the weight-decay schedule, frozen
parameters, gradient clipping, AMP on CUDA, NaN/inf detection, an exponential moving average
of the weights, periodic JSONL logs, atomic checkpoints every N steps, at the end and when a
SIGINT or SIGTERM stops the run (:mod:`hvkit.engine.interrupt`), and exact resumption.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn

from hvkit import distributed
from hvkit.api import OptimizerSpec, SchedulerSpec
from hvkit.engine.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from hvkit.engine.context import StageContext
from hvkit.engine.ema import ModelEma
from hvkit.engine.interrupt import StopRequests
from hvkit.engine.optim import build_optimizer, build_scheduler
from hvkit.errors import HvkitError, Interrupted

StepFn = Callable[[Any, torch.Generator], "torch.Tensor | tuple[torch.Tensor, dict[str, float | torch.Tensor]]"]


@dataclass
class TrainConfig:
    """Training options a stage exposes in its recipe signature."""

    epochs: int = 1
    optimizer: OptimizerSpec = field(default_factory=lambda: {"name": "AdamW", "lr": 1e-3, "weight_decay": 1e-4})
    scheduler: SchedulerSpec | None = None
    loss_lr: float | None = None
    grad_clip: float | None = None
    amp: bool = True
    amp_dtype: Literal["float16", "bfloat16"] = "bfloat16"
    channels_last: bool = True
    sync_batchnorm: bool = True
    log_every: int = 10
    checkpoint_every: int = 200
    max_steps: int | None = None
    weight_decay_end: float | None = None
    weight_decay_1d: bool = True
    frozen_epochs: dict[str, int] = field(default_factory=dict)
    lr_scale: dict[str, float] = field(default_factory=dict)
    ema: float | None = None
    ema_warmup: bool = True
    monitor_every: int | None = None

    def __post_init__(self) -> None:
        for name in "epochs", "log_every", "checkpoint_every", "max_steps", "monitor_every":
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"train.{name}={value} must be >= 1")
        for name in "loss_lr", "weight_decay_end":
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"train.{name}={value} must be >= 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"train.grad_clip={self.grad_clip} must be > 0 (the largest gradient norm; null: off)")
        for prefix, epochs in self.frozen_epochs.items():
            if epochs < 0:
                raise ValueError(f"train.frozen_epochs[{prefix!r}]={epochs} must be >= 0")
        if self.ema is not None and not 0 <= self.ema < 1:
            raise ValueError(f"train.ema={self.ema} must lie in [0, 1): the decay of the weights' moving "
                             "average (0.999 averages about the last 1000 steps; null: off)")
        for prefix, scale in self.lr_scale.items():
            if not scale > 0:
                raise ValueError(f"train.lr_scale[{prefix!r}]={scale} must be > 0 (a multiplier of the "
                                 "learning rate; frozen_epochs stops a part's updates)")


def cosine_weight_decay(base: float, end: float, step: int, total_steps: int) -> float:
    """DINO's schedule ``wd_k = wd_end + (wd_0 - wd_end)(1 + cos(pi k / K)) / 2``: wd_0 at k = 0, wd_end at k = K."""
    return end + (base - end) * (1 + math.cos(math.pi * step / total_steps)) / 2


def amp_supported(device: torch.device, dtype: str) -> bool:
    """Autocast pays on CUDA, and on CPUs with native bfloat16 (AVX512-BF16 or AMX): 2-3x on convolutions."""
    if device.type == "cuda":
        return True
    if device.type != "cpu" or dtype != "bfloat16":
        return False
    native = (getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
              or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return bool(native)


def full_precision(device: torch.device) -> torch.autocast:
    """Context for computing a loss in float32 inside an autocast step (cast its inputs with ``.float()``)."""
    return torch.autocast(device.type, enabled=False)


def parameter_groups(modules: dict[str, nn.Module], config: TrainConfig,
                     loss_modules: tuple[str, ...]) -> list[dict[str, Any]]:
    """Optimiser groups: one per module with trainable parameters (``loss_lr`` for losses).

    ``lr_scale`` moves the parameters under each prefix (the module's name, then the parameter
    path, as ``frozen_epochs``; the longest matching prefix wins) into a group of their own whose
    learning rate is the module's times the scale, e.g. ``{encoder.backbone: 0.1}``: a pre-trained
    backbone fine-tuned at a tenth of its head's rate. Unless ``weight_decay_1d``, each group's
    1-d parameters form a further group without weight decay (``no_decay``).
    """
    base = config.optimizer.get("lr")
    prefixes = sorted(config.lr_scale, key=len, reverse=True)
    named = {name: [(f"{name}.{path}", p) for path, p in distributed.unwrap(module).named_parameters()
                    if p.requires_grad] for name, module in modules.items()}
    for prefix in prefixes:
        if not any(full == prefix or full.startswith(prefix + ".") for params in named.values() for full, _ in params):
            raise HvkitError(f"train.lr_scale names {prefix!r}, which is no trainable parameter nor a prefix "
                             "of one (they are named <module>.<parameter path>, e.g. encoder.backbone)")
    groups = []
    for name, params in named.items():
        lr = config.loss_lr if name in loss_modules and config.loss_lr is not None else None
        buckets: dict[str | None, list[nn.Parameter]] = {None: []}
        for full, p in params:
            prefix = next((q for q in prefixes if full == q or full.startswith(q + ".")), None)
            buckets.setdefault(prefix, []).append(p)
        module_lr = lr if lr is not None else base
        for prefix, bucket in buckets.items():
            extra = {} if lr is None else {"lr": lr}
            if prefix is not None:
                if module_lr is None:
                    raise HvkitError(f"train.lr_scale needs the optimizer's lr ({config.optimizer['name']} "
                                     "has none in the recipe)")
                extra = {"lr": module_lr * config.lr_scale[prefix]}
            label = name if prefix is None else prefix
            plain = [p for p in bucket if config.weight_decay_1d or p.ndim > 1]
            bare = [p for p in bucket if not config.weight_decay_1d and p.ndim <= 1]
            if plain:
                groups.append({"params": plain, "name": label, **extra})
            if bare:
                groups.append({"params": bare, "name": f"{label}.no_decay", "weight_decay": 0.0,
                               "no_decay": True, **extra})
    return groups


def check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """ValueError when a loaded optimiser state (Adam's moments, a momentum buffer) has another shape than its
    parameter, which ``Optimizer.load_state_dict`` does not check (the first step would fail in the optimiser's
    arithmetic, far from the cause)."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for name, value in optimizer.state.get(parameter, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != parameter.shape:
                    raise ValueError(f"the optimiser's {name!r} of a parameter of shape {tuple(parameter.shape)} "
                                     f"has shape {tuple(value.shape)}")


class Trainer:
    """Trains ``modules`` with ``step`` over ``batches``; resumable from ``stage_dir/last.pt``.

    ``loss_modules`` names the modules that are losses (their own ``loss_lr``; their
    gradients synchronised by the gather policy). A module without trainable parameters (a
    momentum teacher) is checkpointed and resumed but not optimised. ``global_batch`` says
    the step computes its loss on the batch gathered from every rank: the backward pass is
    then scaled by the world size (see :mod:`hvkit.distributed`); the logged loss is the
    unscaled one.

    Options of self-supervised training (DINO, Caron et al. 2021, and the official code of
    DINO, MoCo v3 and VICReg): ``weight_decay_end`` moves each decayed group's weight decay
    from the optimiser's to this value on a cosine over the run
    (:func:`cosine_weight_decay`; DINO: 0.04 to 0.4); ``weight_decay_1d: false`` puts every
    1-d parameter (biases, normalisation scales) in a group of its own without weight
    decay; ``frozen_epochs`` maps parameter-name prefixes (the module's name in the stage,
    then its parameter path: ``encoder.head.prototypes``) to a number of epochs during which
    those parameters get no update at all, their gradient dropped before the optimiser
    step (DINO freezes its prototypes for the first epoch). ``lr_scale`` maps such prefixes to
    learning-rate multipliers (:func:`parameter_groups`); with ``frozen_epochs`` on the
    backbone it gives LP-FT (Kumar et al. 2022: the head first, then everything).

    ``ema`` = tau keeps an exponential moving average of the weights (:class:`ModelEma`:
    Polyak averaging, the "model EMA" of timm and of Tarvainen & Valpola 2017),
    ``bar_theta <- tau_k bar_theta + (1 - tau_k) theta`` after each optimiser step and its
    ``after_step``, with tau_k = min(tau, (1 + k) / (10 + k)) at the k-th update when
    ``ema_warmup`` (else tau). It averages the modules that have trainable parameters and
    are not ``loss_modules``; a momentum teacher (no trainable parameter) is not averaged
    and, as the modules keep their raw weights during training, follows the online raw
    weights. The average is checkpointed with the raw weights; at the end of :meth:`fit`,
    after the final checkpoint, it is copied into the modules, so what the stage saves
    afterwards (its encoder) is the averaged model.
    """

    def __init__(self, ctx: StageContext, modules: dict[str, nn.Module], config: TrainConfig,
                 steps_per_epoch: int, loss_modules: tuple[str, ...] = (), global_batch: bool = False):
        self.ctx, self.modules, self.config = ctx, modules, config
        if steps_per_epoch < 1:
            raise HvkitError(f"stage {ctx.name}: an epoch holds no full batch (steps_per_epoch="
                             f"{steps_per_epoch}); lower the batch size or use more data")
        self.steps_per_epoch = steps_per_epoch
        self.loss_modules = loss_modules
        self.backward_scale = distributed.global_loss_scale() if global_batch else 1.0
        self.total_steps = steps_per_epoch * config.epochs
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        try:
            groups = parameter_groups(modules, config, loss_modules)
        except HvkitError as error:
            raise HvkitError(f"stage {ctx.name}: {error}") from None
        if not groups:
            raise HvkitError(f"stage {ctx.name}: nothing to train (all parameters are frozen)")
        self.optimizer = build_optimizer(config.optimizer, groups)
        self.decayed: list[tuple[int, float]] = []
        if config.weight_decay_end is not None:
            if any("weight_decay" not in g for g in self.optimizer.param_groups):
                raise HvkitError(f"stage {ctx.name}: train.weight_decay_end is set but optimizer "
                                 f"{config.optimizer['name']} has no weight_decay")
            self.decayed = [(i, g["weight_decay"]) for i, g in enumerate(self.optimizer.param_groups)
                            if not g.get("no_decay")]
        self.frozen = self._frozen_parameters(config.frozen_epochs)
        self.scheduler = build_scheduler(config.scheduler, self.optimizer, self.total_steps)
        self.use_amp = config.amp and amp_supported(ctx.device, config.amp_dtype)
        if config.channels_last:
            for module in modules.values():
                module.to(memory_format=torch.channels_last)
        self.ema = self._model_ema()
        self.amp_dtype = getattr(torch, config.amp_dtype)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and config.amp_dtype == "float16")
        self.step = 0
        self.checkpoint_path = ctx.stage_dir / "last.pt"
        self.rank_key = ("rank", ctx.rank) if ctx.world_size > 1 else ()
        self.log_path = ctx.stage_dir / "log.jsonl"

    def _frozen_parameters(self, prefixes: dict[str, int]) -> list[tuple[list[nn.Parameter], int]]:
        """``frozen_epochs`` as (parameters, steps): each prefix must name at least one trainable parameter."""
        named = {f"{name}.{path}": p for name, module in self.modules.items()
                 for path, p in distributed.unwrap(module).named_parameters() if p.requires_grad}
        frozen = []
        for prefix, epochs in prefixes.items():
            params = [p for path, p in named.items() if path == prefix or path.startswith(prefix + ".")]
            if not params:
                example = ", ".join(list(named)[:3])
                raise HvkitError(f"stage {self.ctx.name}: train.frozen_epochs names {prefix!r}, which is no "
                                 f"trainable parameter nor a prefix of one (they are named like {example})")
            frozen.append((params, epochs * self.steps_per_epoch))
        return frozen

    def _model_ema(self) -> ModelEma | None:
        """``train.ema``'s average of the trained modules other than the losses, or None when it is off."""
        if self.config.ema is None:
            return None
        averaged = {name: module for name, module in self.modules.items() if name not in self.loss_modules
                    and any(p.requires_grad for p in module.parameters())}
        if not averaged:
            raise HvkitError(f"stage {self.ctx.name}: train.ema is set but no module other than the losses "
                             f"has trainable parameters (modules: {', '.join(self.modules)})")
        return ModelEma(averaged, self.config.ema, self.config.ema_warmup)

    def state(self) -> dict[str, Any]:
        return {
            "modules": {k: distributed.unwrap(m).state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "total_steps": self.total_steps,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "torch_rng": distributed.gather_objects(torch.get_rng_state()),
            "cuda_rng": distributed.gather_objects(torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        for k, module in self.modules.items():
            distributed.unwrap(module).load_state_dict(state["modules"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        check_optimizer_state(self.optimizer)
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        rank = self.ctx.rank if len(state["torch_rng"]) == self.ctx.world_size else 0
        torch.set_rng_state(state["torch_rng"][rank].cpu())  # the checkpoint was mapped to the run's device
        if state["cuda_rng"][rank] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"][rank]])

    def save(self) -> None:
        state = self.state()
        if self.ctx.is_main:
            save_checkpoint(self.checkpoint_path, state)
        distributed.barrier()

    def fit(self, batches: Callable[[int], Iterable[Any]], step: StepFn,
            after_step: Callable[[int], None] | None = None,
            monitor: Callable[[], dict[str, float]] | None = None) -> dict[str, float]:
        """Run to ``epochs`` (or ``max_steps``); returns the last logged values.

        ``after_step(steps_done)`` runs after each optimiser step, before the step is logged or
        checkpointed, so a checkpoint holds what it changed. With ``train.ema`` the modules hold
        the averaged weights when ``fit`` returns (the final checkpoint holds both). A SIGINT or
        SIGTERM ends the step under way, saves a checkpoint there and raises :class:`Interrupted`.
        With ``train.monitor_every`` = n, the stage's ``monitor()`` (figures of the model on held-out
        data; it must draw no random numbers) runs after every n-th epoch and after the last step,
        with the modules in eval mode and no gradient (and the averaged weights with ``train.ema``), and its
        values join that step's log line.
        """
        if self.config.monitor_every is not None and monitor is None:
            raise HvkitError(f"stage {self.ctx.name}: train.monitor_every is set but this stage offers no monitor "
                             "(the first-party training stages do); remove it")
        if self.ctx.resume and self.checkpoint_path.is_file():
            state = load_checkpoint(self.checkpoint_path, self.ctx.device)
            try:
                self.load_state(state)
            except (RuntimeError, ValueError, KeyError) as exc:
                said = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
                said = said if len(said) <= 300 else said[:299] + "…"
                raise HvkitError(f"stage {self.ctx.name}: {self.checkpoint_path} does not fit the stage "
                                 f"({type(exc).__name__}: {said}): was it written by another version of hvkit or "
                                 "of a plugin? Move it away and the same command starts the stage again") from None
            self.ctx.log(f"resumed at step {self.step}")
        last = self._trim_log() if self.ctx.resume else {}
        for module in self.modules.values():
            module.train()
        progress = _Progress(self.ctx, self.total_steps, self.step)
        window_start, window_steps = time.perf_counter(), 0
        start_epoch, skip = divmod(self.step, self.steps_per_epoch)
        with StopRequests() as stop:
            for epoch in range(start_epoch, self.config.epochs):
                if self.step >= self.total_steps:
                    break
                for index, batch in enumerate(batches(epoch)):
                    if epoch == start_epoch and index < skip:
                        continue
                    if index >= self.steps_per_epoch or self.step >= self.total_steps:
                        break
                    generator = self.ctx.generator("step", self.step, *self.rank_key)
                    loss, terms = self._one_step(step, batch, generator)
                    self.step += 1
                    if after_step is not None:
                        after_step(self.step)
                    if self.ema is not None:
                        self.ema.update()
                    window_steps += 1
                    monitored = monitor is not None and self._monitor_due(epoch, index)
                    if self.step % self.config.log_every == 0 or self.step == self.total_steps or monitored:
                        elapsed = time.perf_counter() - window_start
                        last = {"step": self.step, "total_steps": self.total_steps, "epoch": epoch, "loss": loss,
                                "lr": self.optimizer.param_groups[0]["lr"],
                                "steps_per_s": window_steps / max(elapsed, 1e-9), "time": round(time.time(), 1),
                                **{k: float(v) for k, v in terms.items()}}
                        if monitored:
                            last |= self._monitored(monitor)
                        self._log(last)
                        progress.update(self.step, loss)
                        window_start, window_steps = time.perf_counter(), 0
                    received = stop.agreed(self.ctx.device)
                    if received is not None and self.step < self.total_steps:
                        progress.close()
                        self.save()
                        raise self._interrupted(received)
                    if self.step % self.config.checkpoint_every == 0 and self.step < self.total_steps:
                        self.save()
            progress.close()
            self.save()
            received = stop.agreed(self.ctx.device)
            if received is not None:  # during the last step or its checkpoint
                raise self._interrupted(received)
        if self.ema is not None:
            self.ema.copy_to()
            self.ctx.log(f"the stage exports the moving average of the weights of {', '.join(self.ema.modules)} "
                         f"(train.ema={self.config.ema}), not the last step's")
        return last

    def _monitor_due(self, epoch: int, index: int) -> bool:
        """Whether the step just taken (batch ``index`` of ``epoch``) ends a monitored epoch or the run."""
        every = self.config.monitor_every
        if every is None:
            return False
        return self.step == self.total_steps or (index == self.steps_per_epoch - 1 and (epoch + 1) % every == 0)

    def _monitored(self, monitor: Callable[[], dict[str, float]]) -> dict[str, float]:
        """``monitor()``'s values, run in eval mode without gradients and, with ``train.ema``, on the averaged
        weights (what the stage exports); the modules' modes and weights are restored."""
        modes = {name: module.training for name, module in self.modules.items()}
        for module in self.modules.values():
            module.eval()
        with torch.no_grad(), self.ema.swapped() if self.ema is not None else contextlib.nullcontext():
            values = {k: float(v) for k, v in monitor().items()}
        for name, module in self.modules.items():
            module.train(modes[name])
        return values

    def _interrupted(self, received: signal.Signals) -> Interrupted:
        """The stop on ``received``, once the checkpoint at this step is saved."""
        return Interrupted(f"stage {self.ctx.name}: {received.name} at step {self.step}/{self.total_steps}, "
                           f"checkpoint saved there; hvkit run --resume {self.ctx.run_dir} continues to the "
                           "uninterrupted result", 128 + received.value)

    def _one_step(self, step: StepFn, batch: Any,
                  generator: torch.Generator) -> tuple[float, dict[str, float | torch.Tensor]]:
        """One optimiser step; the loss's value and the step's parts (read to floats only when logged)."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.ctx.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            out = step(batch, generator)
        loss, terms = (out if isinstance(out, tuple) else (out, {}))
        value = float(loss.detach())
        if not math.isfinite(value):
            kept = (f"last good checkpoint {self.checkpoint_path} kept" if self.checkpoint_path.is_file()
                    else "no checkpoint was written yet")
            raise HvkitError(f"stage {self.ctx.name}: loss is {value} at step {self.step + 1}; "
                             f"stopped ({kept}); lower the learning rate or check the data")
        self.scaler.scale(loss * self.backward_scale if self.backward_scale != 1.0 else loss).backward()
        for name in self.loss_modules:
            distributed.sync_loss_gradients(self.modules[name], gathered=self.backward_scale != 1.0)
        for params, steps in self.frozen:
            if self.step < steps:
                for p in params:
                    p.grad = None
        for index, base in self.decayed:  # by index: loading a checkpoint replaces the group dicts
            self.optimizer.param_groups[index]["weight_decay"] = cosine_weight_decay(
                base, self.config.weight_decay_end, self.step, self.total_steps)
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return value, terms

    def _trim_log(self) -> dict[str, float]:
        """Drop the log lines written after the checkpoint resumed from; returns the last one kept."""
        kept = [row for row in read_log(self.log_path) if row["step"] <= self.step]
        if self.ctx.is_main and self.log_path.is_file():
            atomic_write(self.log_path, lambda f: f.writelines(json.dumps(row) + "\n" for row in kept), "w")
        return kept[-1] if kept else {}

    def _log(self, values: dict[str, float]) -> None:
        if self.ctx.is_main:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(values) + "\n")


def duration(seconds: float) -> str:
    """``45 s``, ``12 min`` or ``1 h 35 min``: a time left, to the unit that matters."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60} min"


class _Progress:
    """A tqdm bar on a terminal, plain lines otherwise (rank 0 only), with the time per step and the
    time left, measured over the steps this process ran (a resumed stage's earlier ones excluded)."""

    def __init__(self, ctx: StageContext, total: int, initial: int):
        self.ctx = ctx
        self.bar = None
        if ctx.is_main and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=ctx.name, unit="step", leave=False)
        self.total, self.initial, self.started = total, initial, time.perf_counter()

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.4f}")
            return
        per_step = (time.perf_counter() - self.started) / max(step - self.initial, 1)
        left = f", {duration(per_step * (self.total - step))} left" if step < self.total else ""
        self.ctx.log(f"step {step}/{self.total} loss {loss:.4f} ({per_step:.3g} s/step{left})")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_log(path: Path) -> list[dict[str, float]]:
    """The rows of a stage's ``log.jsonl`` ([] when there is none). A last line cut short (a write the
    process did not finish) is left out, as the checkpoint it follows holds the truth; a broken line
    before the last is an error naming the file and line."""
    if not path.is_file():
        return []
    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    rows = []
    for index, (number, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if index == len(lines) - 1:
                break
            raise HvkitError(f"{path}:{number}: not a log line ({exc.msg}); move the file away and the stage "
                             "goes on without its earlier log") from None
    return rows
