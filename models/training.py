"""Supervised fine-tuning of chat models on trajectory records (``evals.trajectories``).

Generic over Hugging Face chat models: a text LM (``AutoModelForCausalLM`` + tokenizer) or an LVLM
(``AutoModelForImageTextToText`` + processor). Each record's messages are rendered exactly as
``models.transformers_backend.TransformersBackend`` renders them at inference (the chat template
with the generation prompt; image parts become the processor's expanded image placeholder), then
the reply and EOS are appended; the loss is on the reply tokens only (optionally weighted per
record).

- full fine-tune by default; LoRA with ``TrainConfig.lora`` (needs ``peft``; merged on save);
- AdamW, linear warm-up then cosine decay, gradient clipping, batches of similar length;
- a progress bar (tqdm), resumable checkpoints (``checkpoint.pt``: weights, optimiser, scheduler,
  step, RNG), ``losses.json`` and a loss-curve PNG (matplotlib) in the run folder;
- ``augment``: a callable applied to a batch's ``pixel_values`` (e.g. flips), ``aux``: an extra
  loss (e.g. an auxiliary classifier on the image features) trained alongside and discarded.

:func:`encode_records` turns records into :class:`Example` objects, :func:`train` runs the loop.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.records import message_images, message_text

logger = logging.getLogger(__name__)


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    #: stop early (logged) after this many seconds of training; None: run all steps
    max_seconds: float | None = None
    checkpoint_every: int = 500
    resume: bool = True
    log_every: int = 10
    progress: bool = True
    #: torch threads for this process (None: leave torch's default)
    threads: int | None = None
    lora: LoraSettings | None = None


@dataclass
class Example:
    """One tokenised record: prompt + reply ids, where the reply starts, optional image key."""

    input_ids: list[int]
    reply_start: int
    image: str | None = None  # key into the pixel-values table
    weight: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: per reply token loss weights (None: all 1), e.g. to stress the tokens that carry content
    token_weights: list[float] | None = None


# ------------------------------------------------------------------------------ rendering


def conversation(record: dict[str, Any], *, vision: bool) -> list[dict[str, Any]]:
    """A record's messages as the production backend passes them to ``apply_chat_template``."""
    out = []
    for message in record["messages"]:
        if vision:
            parts = message["content"]
            if isinstance(parts, str):
                parts = [{"type": "text", "text": parts}]
            content: Any = [
                {"type": "image"} if p.get("type") == "image"
                else {"type": "text", "text": p.get("text", "")}
                for p in parts
            ]  # fmt: skip
        else:
            content = message_text(message)
        out.append({"role": message["role"], "content": content})
    return out


def render_prompt(record: dict[str, Any], renderer: Any, *, vision: bool) -> str:
    """The prompt text the model sees (chat template + generation prompt)."""
    return renderer.apply_chat_template(
        conversation(record, vision=vision), add_generation_prompt=True, tokenize=False
    )


def image_key(part: dict[str, Any]) -> str:
    return str(part.get("path") or part.get("sha256"))


def encode_records(
    records: Sequence[dict[str, Any]],
    tokenizer: Any,
    *,
    processor: Any | None = None,
    image_expansion: str | None = None,
    weight: Callable[[dict[str, Any]], float] | None = None,
    extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    token_weights: dict[int, float] | None = None,
) -> list[Example]:
    """Records -> Examples. LVLM records need ``processor`` and ``image_expansion`` (the text one
    image placeholder becomes, e.g. from :func:`image_expansion_of`); one image per record.

    ``weight(record)`` weights a whole record; ``token_weights`` maps token ids to a loss weight
    inside replies (the rest weigh 1): a few content words copied from the notes are otherwise
    drowned by the format tokens around them."""
    vision = processor is not None
    renderer = processor if vision else tokenizer
    eos = tokenizer.eos_token_id
    image_token = getattr(processor, "image_token", None) if vision else None
    prompt_cache: dict[str, list[int]] = {}
    examples = []
    for record in records:
        prompt = render_prompt(record, renderer, vision=vision)
        images = [p for m in record["messages"] for p in message_images(m)]
        if vision and images:
            if len(images) != 1 or image_expansion is None:
                raise ValueError("LVLM training takes exactly one image per record")
            prompt = prompt.replace(image_token, image_expansion)
        ids = prompt_cache.get(prompt)
        if ids is None:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            prompt_cache[prompt] = ids
        reply = tokenizer(record["reply"], add_special_tokens=False)["input_ids"] + [eos]
        examples.append(
            Example(
                input_ids=list(ids) + reply,
                reply_start=len(ids),
                image=image_key(images[0]) if images else None,
                weight=weight(record) if weight else 1.0,
                extra=extra(record) if extra else {},
                token_weights=[token_weights.get(t, 1.0) for t in reply] if token_weights else None,
            )
        )
    return examples


def image_expansion_of(processor: Any, image: Any) -> tuple[str, dict[str, Any]]:
    """(the text one ``<image>`` placeholder expands to, the processor's image tensors)."""
    out = processor(
        text=[processor.image_token], images=[image], return_tensors="pt", add_special_tokens=False
    )
    expansion = processor.tokenizer.decode(out["input_ids"][0], skip_special_tokens=False)
    keys = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
    return expansion, {k: v for k, v in out.items() if k not in keys}


# ------------------------------------------------------------------------------ the loop


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine

    return f


class _Batches:
    """Random batches of similar length (length-sorted pools), reproducible from a seed; records
    with an image and records without are never mixed in one batch."""

    def __init__(self, examples: Sequence[Example], batch_size: int, seed: int) -> None:
        self.examples = examples
        self.batch_size = batch_size
        self.rng = random.Random(seed)
        self._queue: list[list[int]] = []

    def _refill(self) -> None:
        order = list(range(len(self.examples)))
        self.rng.shuffle(order)
        pool = self.batch_size * 32
        batches = []
        step = self.batch_size
        for i in range(0, len(order), pool):
            chunk = order[i : i + pool]
            # a batch holds records with images or records without, never both
            for with_image in (True, False):
                group = [j for j in chunk if (self.examples[j].image is not None) == with_image]
                group.sort(key=lambda j: len(self.examples[j].input_ids))
                batches += [group[k : k + step] for k in range(0, len(group), step)]
        self.rng.shuffle(batches)
        self._queue = batches

    def next(self) -> list[Example]:
        if not self._queue:
            self._refill()
        return [self.examples[j] for j in self._queue.pop()]

    def state(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "queue": self._queue}

    def load(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self._queue = state["queue"]


def collate(
    torch: Any, batch: Sequence[Example], pad_id: int, pixels: dict[str, Any] | None
) -> dict[str, Any]:
    """Right-padded ids, attention mask, reply mask (token weights), weights, pixel values."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    reply = torch.zeros((len(batch), width), dtype=torch.float32)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        attn[i, :n] = 1
        reply[i, e.reply_start : n] = torch.tensor(e.token_weights) if e.token_weights else 1.0
    out: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": attn,
        "reply_mask": reply,
        "weights": torch.tensor([e.weight for e in batch], dtype=torch.float32),
        "examples": batch,
    }
    if pixels is not None and batch[0].image is not None:
        out["pixel_values"] = torch.cat([pixels[e.image] for e in batch], dim=0)
    return out


def reply_loss(torch: Any, logits: Any, batch: dict[str, Any]) -> Any:
    """Mean over records (weighted) of the token-weighted mean cross-entropy over each record's
    reply tokens.

    ``logits`` may cover only the last positions of the sequence (``logits_to_keep``).
    """
    keep = logits.shape[1]
    targets = batch["input_ids"][:, -keep + 1 :]
    mask = batch["reply_mask"][:, -keep + 1 :]
    logp = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
        reduction="none",
    ).view(targets.shape)  # fmt: skip
    per_record = (logp * mask).sum(1) / mask.sum(1).clamp(min=1)
    weights = batch["weights"]
    return (per_record * weights).sum() / weights.sum()


def train(
    model: Any,
    examples: Sequence[Example],
    cfg: TrainConfig,
    run_dir: Path,
    *,
    pad_id: int,
    pixels: dict[str, Any] | None = None,
    augment: Callable[[Any, random.Random], Any] | None = None,
    aux: Any | None = None,
    aux_loss: Callable[[Any, Any, dict[str, Any]], Any] | None = None,
    name: str = "train",
) -> tuple[Any, dict[str, Any]]:
    """Train ``model`` on ``examples``; returns (the model, LoRA merged; a summary dict).

    ``aux`` (an ``nn.Module``) is optimised with the model when ``aux_loss(model, aux, batch)``
    adds to the loss. Checkpoints go to ``run_dir/checkpoint.pt`` every ``checkpoint_every``
    steps and at the end; with ``cfg.resume`` an existing checkpoint is continued.
    """
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.lora is not None:
        model = _with_lora(model, cfg.lora)
    params = [p for p in model.parameters() if p.requires_grad]
    if aux is not None:
        params += list(aux.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98),
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    batches = _Batches(examples, cfg.batch_size, cfg.seed)
    aug_rng = random.Random(cfg.seed + 1)
    losses: list[float] = []
    step = 0
    ckpt = run_dir / "checkpoint.pt"
    if cfg.resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        if aux is not None and state.get("aux") is not None:
            aux.load_state_dict(state["aux"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        batches.load(state["batches"])
        aug_rng.setstate(state["aug_rng"])
        torch.set_rng_state(state["torch_rng"])
        losses = state["losses"]
        step = state["step"]
        logger.info("%s: resumed from %s at step %d", name, ckpt, step)

    def save_checkpoint() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "aux": aux.state_dict() if aux is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "batches": batches.state(),
                "aug_rng": aug_rng.getstate(),
                "torch_rng": torch.get_rng_state(),
                "losses": losses,
                "step": step,
                "config": asdict(cfg),
            },
            tmp,
        )
        tmp.replace(ckpt)

    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=name, mininterval=2.0, leave=True)
    model.train()
    started = time.perf_counter()
    stopped_early = False
    while step < cfg.steps:
        if cfg.max_seconds is not None and time.perf_counter() - started > cfg.max_seconds:
            stopped_early = True
            logger.warning("%s: time budget %.0fs reached at step %d", name, cfg.max_seconds, step)
            break
        batch = collate(torch, batches.next(), pad_id, pixels)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if "pixel_values" in batch:
            pv = batch["pixel_values"]
            inputs["pixel_values"] = augment(pv, aug_rng) if augment else pv
            batch["pixel_values"] = inputs["pixel_values"]
        # logits only where replies are (right padding: the last `keep` positions cover them)
        keep = batch["input_ids"].shape[1] - min(e.reply_start for e in batch["examples"]) + 1
        logits = model(**inputs, logits_to_keep=keep).logits
        loss = reply_loss(torch, logits, batch)
        if aux_loss is not None:
            loss = loss + aux_loss(model, aux, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            if step % cfg.log_every == 0:
                bar.set_postfix(loss=f"{sum(losses[-cfg.log_every :]) / cfg.log_every:.4f}")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            save_checkpoint()
    if bar is not None:
        bar.close()
    save_checkpoint()
    model.eval()
    if cfg.lora is not None:
        model = model.merge_and_unload()
    summary = {
        "name": name,
        "steps": step,
        "stopped_early": stopped_early,
        "seconds": round(time.perf_counter() - started, 1),
        "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
        "examples": len(examples),
    }
    (run_dir / "losses.json").write_text(json.dumps({"summary": summary, "losses": losses}))
    plot_losses(losses, run_dir / "loss.png", title=name)
    return model, summary


def plot_losses(losses: Sequence[float], path: Path, *, title: str = "") -> None:
    """Training loss (raw and smoothed) against step, log scale, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if losses:
        ax.plot(range(1, len(losses) + 1), losses, alpha=0.3, lw=0.8, label="loss")
        smooth, ema = [], losses[0]
        for value in losses:
            ema = 0.95 * ema + 0.05 * value
            smooth.append(ema)
        ax.plot(range(1, len(losses) + 1), smooth, lw=1.5, label="EMA 0.95")
        if min(losses) > 0:
            ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("reply loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _with_lora(model: Any, lora: LoraSettings) -> Any:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise RuntimeError("LoRA training needs peft: pip install 'proreason[train]'") from None
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
    )
    return get_peft_model(model, config)
