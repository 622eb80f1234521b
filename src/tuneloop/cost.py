"""What a run cost: device-hours at the price table's rate, tokens, estimated FLOPs and (on GPUs) model FLOPs
utilisation. Every training stage and every evaluation task is priced, so sweeps can trade quality for money.

FLOPs follow the usual estimates: 6·N·tokens for training (forward and backward through N parameters) and
2·N·tokens for inference. With LoRA the frozen weights need no weight gradients, so 6·N·tokens overstates the
work by up to a third; it is still the figure MFU is conventionally quoted against.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tuneloop import shipped
from tuneloop.config.yamlsource import parse
from tuneloop.errors import TuneloopError


@dataclass(frozen=True)
class Price:
    """The rate a run is charged at: one device of `device` for one hour costs `per_hour`."""

    device: str
    per_hour: float
    currency: str
    peak_flops: float | None  # per device, FLOP/s; None for CPUs
    source: str  # "table", "recipe" (price given), "detected"


@cache
def load_prices(path: str | None = None) -> dict[str, Any]:
    """The price table (configs/cost/prices.yaml unless a recipe names another)."""

    file = Path(path) if path else shipped.configs() / "cost" / "prices.yaml"
    if not file.is_file():
        raise TuneloopError(f"price table {file} does not exist")
    table = parse(file.read_text())
    if not isinstance(table, dict) or not isinstance(table.get("devices"), dict):
        raise TuneloopError(f"{file}: a price table has `currency:` and a `devices:` mapping")
    return table


def detect_device(table: dict[str, Any]) -> str:
    """The table entry for this machine: the GPU's name matched against `match:` lists, else the smallest CPU
    instance with at least this machine's cores (the one you would rent), or the largest."""
    import torch

    devices = table["devices"]
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        for key, spec in devices.items():
            if any(m.lower() in name.lower() for m in spec.get("match", [])):
                return key
        raise TuneloopError(
            f"GPU {name!r} is not in the price table; add it to configs/cost/prices.yaml or set `cost.device`"
        )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cpus = sorted((spec.get("cores", 0), key) for key, spec in devices.items() if spec.get("kind") == "cpu")
    if not cpus:
        raise TuneloopError("the price table has no CPU instances (kind: cpu); set `cost.device`")
    return next((key for n, key in cpus if n >= cores), cpus[-1][1])


def price_for(device: str = "auto", per_hour: float | None = None, prices: str | None = None) -> Price:
    """Resolve a recipe's `cost:` choices (device name or auto-detection, optional explicit price) to a rate."""
    table = load_prices(prices)
    source = "table"
    if device == "auto":
        device = detect_device(table)
        source = "detected"
    spec = table["devices"].get(device)
    if spec is None:
        raise TuneloopError(f"device {device!r} is not in the price table; devices: {', '.join(table['devices'])}")
    peak = spec.get("peak_tflops")
    rate = float(spec["price_per_hour"]) if per_hour is None else float(per_hour)
    return Price(
        device,
        rate,
        table.get("currency", "USD"),
        peak * 1e12 if peak else None,
        "recipe" if per_hour is not None else source,
    )


def recipe_price(cost: Any, recipe_dir: Path) -> Price:
    """The rate of a recipe's `cost:` section; a relative `prices` path is looked up next to the recipe first."""
    prices = cost.prices
    if prices and not Path(prices).is_absolute() and (recipe_dir / prices).exists():
        prices = str(recipe_dir / prices)
    return price_for(cost.device, cost.price_per_hour, prices)


def account(
    price: Price,
    wall_s: float,
    devices: int,
    tokens: int,
    params: int | None,
    kind: str,
    busy_s: float | None = None,
) -> dict[str, Any]:
    """The cost record of one piece of work: `kind` is `training` (6·N·tokens) or `inference` (2·N·tokens).

    Money is charged for the whole wall time (the devices are held throughout); MFU divides the FLOPs by the time
    the devices were busy with this work (`busy_s`, e.g. training steps without evaluation), when given."""
    device_hours = devices * wall_s / 3600
    flops = (6 if kind == "training" else 2) * params * tokens if params else None
    busy = busy_s if busy_s else wall_s
    mfu = flops / (busy * devices * price.peak_flops) if flops and price.peak_flops and busy > 0 else None
    return {
        "device": price.device,
        "devices": devices,
        "price_per_device_hour": price.per_hour,
        "currency": price.currency,
        "wall_s": wall_s,
        "device_hours": device_hours,
        "money": device_hours * price.per_hour,
        "tokens": tokens,
        "parameters": params,
        "kind": kind,
        "flops": flops,
        "mfu": mfu,
    }


def total(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum of several cost records (a run's stages and evaluation)."""
    records = [r for r in records if r]
    if not records:
        return {}
    flops = [r["flops"] for r in records if r.get("flops")]
    return {
        "currency": records[0]["currency"],
        "device_hours": sum(r["device_hours"] for r in records),
        "money": sum(r["money"] for r in records),
        "tokens": sum(r["tokens"] for r in records),
        "flops": sum(flops) if flops else None,
    }


def describe(record: dict[str, Any]) -> str:
    """One line for summaries: money, device-hours, FLOPs, MFU."""
    if not record:
        return "-"
    money = record["money"]
    shown = f"{money:.4f}" if money >= 1e-4 or money == 0 else f"{money:.1e}"
    parts = [f"{shown} {record['currency']}", f"{record['device_hours']:.4f} device-h"]
    if "device" in record:
        parts[-1] += f" ({record['devices']}× {record['device']} at {record['price_per_device_hour']:g}/h)"
    if record.get("flops"):
        parts.append(f"{record['flops']:.2e} FLOPs")
    if record.get("mfu") is not None:
        parts.append(f"MFU {100 * record['mfu']:.1f}%")
    return " · ".join(parts)


def safetensors_params(path: str) -> int | None:
    """Parameter count from a checkpoint's safetensors headers, without loading it (for engines like vLLM)."""
    import json
    import struct

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        return None
    n = 0
    for f in files:
        with f.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for key, info in header.items():
            if key != "__metadata__":
                count = 1
                for d in info["shape"]:
                    count *= d
                n += count
    return n
