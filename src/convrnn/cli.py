"""The ``convrnn`` command line.

convrnn list [PATTERN]                 models in the zoo
convrnn spec NAME [--out FILE]         a model's architecture as YAML (or JSON by suffix)
convrnn extract [IMAGES...]            features per area and time step, with a summary table
convrnn demo                           train a small RGC on the built-in task; accuracy per 10-ms step
convrnn download NAME... | --all       fetch, verify, convert and cache the published weights (--list: the cache)
convrnn convert / train / eval         TF checkpoints to safetensors; training (resumable, torchrun); accuracy per step
convrnn search [report]                architecture search (Optuna) and its report
convrnn fit / ost                      neural predictivity per 10-ms bin; object solution times
convrnn brainscore-plugin              a Brain-Score submission folder
convrnn experiment cells / thesis      the papers' comparisons at laptop scale (docs/results.md)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import convrnn
from convrnn.data.images import ImageError, eval_transform, load_images
from convrnn.spec import ModelSpec
from convrnn.train.checkpoint import CheckpointWriteError
from convrnn.train.trainer import TrainingError

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


class UsageError(ValueError):
    """A command cannot run as asked: `convrnn: <message>` on one line, exit code 2 (as every bad input)."""


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="rgc_shallow", help="zoo name (see `convrnn list`); default rgc_shallow")
    p.add_argument("--spec", type=Path, help="build from a spec YAML/JSON file instead of a zoo name")
    p.add_argument("--weights", type=Path, help="a .safetensors file or PyTorch state dict to load")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None, help="input size in px (default: the model's)")
    p.add_argument("--width", type=float, default=None, help="channel width multiplier")


def _build(args: argparse.Namespace) -> convrnn.ConvRNN:
    overrides = {
        k: v
        for k, v in (("num_classes", args.num_classes), ("image_size", args.image_size), ("width", args.width))
        if v is not None
    }
    if args.spec is not None:
        if overrides:
            raise UsageError("--num-classes/--image-size/--width apply to zoo models, not to --spec")
        return convrnn.create_model(ModelSpec.load(args.spec), weights=args.weights)
    return convrnn.create_model(args.model, weights=args.weights, **overrides)


def skimage_photos(size: int) -> tuple[torch.Tensor, list[str]]:
    """scikit-image's bundled sample photographs, as a normalised batch."""
    try:
        from skimage import data
    except ImportError:
        raise UsageError("the demo needs scikit-image (pip install 'convrnn[demo]')") from None
    from PIL import Image

    tf = eval_transform(size)
    return torch.stack([tf(Image.fromarray(getattr(data, n)()).convert("RGB")) for n in SKIMAGE_PHOTOS]), list(
        SKIMAGE_PHOTOS
    )


def cmd_list(args: argparse.Namespace) -> int:
    from convrnn.zoo import model_entry

    for name in convrnn.list_models(args.pattern):
        w = model_entry(name).weights
        top1 = f"reference top-1 {w.top1:.2f}%" if w and w.top1 is not None else ""
        print(f"{name:32s} {top1}")
    return 0


def _out_file(out: Path, suffixes: tuple[str, ...]) -> Path:
    """Check an --out file path before any work: a known suffix, an existing folder, not a folder itself."""
    if out.suffix.lower() not in suffixes:
        raise UsageError(f"--out {str(out)!r}: name a {' or '.join(suffixes)} file")
    if out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a folder; name a file in it")
    if not out.parent.is_dir():
        raise UsageError(f"--out {str(out)!r}: no folder {str(out.parent)!r}")
    return out


def cmd_spec(args: argparse.Namespace) -> int:
    if args.out:
        _out_file(Path(args.out), (".yaml", ".yml", ".json"))
    model = _build(args)
    spec = model.spec
    if args.out:
        spec.save(args.out)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(spec.to_yaml())
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    if args.out:
        _out_file(Path(args.out), (".npz",))
    torch.manual_seed(args.seed)
    model = _build(args).eval()
    size = model.spec.image_size
    if args.images:
        x, names = load_images(args.images, size), [p.name for p in args.images]
    else:
        x, names = skimage_photos(size)
    if getattr(args, "weights", None) is None:
        print(
            f"note: {model.spec.name} has random weights (seed {args.seed}); pass --weights for trained ones",
            file=sys.stderr,
        )
    areas = args.areas or [a for a in ("V4", "pIT", "cIT-aIT", "IT") if a in model.spec.areas] or list(model.layers)
    with torch.no_grad():
        feats = model.features(x, areas=areas, presentation=args.presentation, times=args.times)
    first = model.first_stimulus_steps()
    print(f"{model.spec.name}: {len(names)} images ({', '.join(names)}) at {size}px, presentation {args.presentation}")
    print(f"{'area':8s} {'step':>4s} {'ms':>9s} {'units':>7s} {'mean':>9s} {'std':>9s} {'image-spread':>12s}")
    for area, by_t in feats.items():
        start = min(first[layer] for layer in model.area_layers(area))
        for t, f in by_t.items():
            f = f.flatten(1)
            # Spread across images: zero until the stimulus reaches the area (bias-driven activity).
            spread = f.std(dim=0).mean().item() if f.shape[0] > 1 else float("nan")
            lo, hi = model.step_window_ms(t)
            mark = " <- stimulus arrives" if t == start else ""
            print(
                f"{area:8s} {t:4d} {f'{lo:.0f}-{hi:.0f}':>9s} {f.shape[1]:7d} {f.mean().item():9.4f} {f.std().item():9.4f} {spread:12.4f}{mark}"
            )
    if args.out:
        arrays = {f"{a}_t{t:02d}": f.numpy() for a, by_t in feats.items() for t, f in by_t.items()}
        out = Path(args.out)
        tmp = out.with_name(f".{out.name}.tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(out)
        print(f"wrote {out} ({len(arrays)} arrays)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from convrnn.convert import convert_checkpoint

    model = _build(args)
    out = convert_checkpoint(args.checkpoint, model, args.out, model_name=args.model)
    print(f"converted {args.checkpoint} -> {out} ({sum(p.numel() for p in model.state_dict().values()):,} values)")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    import logging

    from convrnn.zoo import pretrained

    if args.list:
        return _list_cache(pretrained.cache_dir())
    if not args.names and not args.all:
        print("convrnn: download needs model names, --all or --list", file=sys.stderr)
        return 2
    names = convrnn.zoo.published_models() if args.all else list(dict.fromkeys(args.names))
    for name in names:  # a typo stops everything before any download starts
        pretrained.pretrained_weights(name)
    overrides = {
        k: v
        for k, v in (("num_classes", args.num_classes), ("image_size", args.image_size), ("width", args.width))
        if v is not None
    }
    # The library's notes (waiting for another process, a corrupt file fetched again) as lines of this command.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("convrnn: %(message)s"))
    logger = logging.getLogger("convrnn.pretrained")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    failed = 0
    try:
        for name in names:
            try:
                cached = pretrained.weights_path(name).is_file()
                model = convrnn.create_model(name, **overrides) if overrides and not cached else None
                path = pretrained.fetch_weights(
                    name, model, base_url=args.base_url, offline=True if args.offline else None, keep_tf=args.keep_tf
                )
            except (ValueError, KeyError) as e:  # one line per model; the others still get their turn
                msg = e.args[0] if isinstance(e, KeyError) and e.args else e
                print(f"convrnn: {msg}", file=sys.stderr)
                failed += 1
                continue
            print(f"{name}: {'cached' if cached else 'converted'} {path} ({_mb(path.stat().st_size)})")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return 2 if failed else 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _list_cache(root: Path) -> int:
    from convrnn.zoo.pretrained import cached_models

    models = cached_models(root)
    if not models:
        print(f"cache {root}: empty")
        return 0
    print(f"cache {root}")
    for m in models:
        what = ["weights"] if m.weights else []
        partial = [p.name for p in m.tf_files if p.name.endswith(".part")]
        if len(partial) < len(m.tf_files):
            what.append("TF checkpoint")
        if partial:
            what.append(f"partial download ({', '.join(partial)})")
        print(f"{m.name:32s} {_mb(m.size):>10s}  {' + '.join(what)}")
    print(f"{'total':32s} {_mb(sum(m.size for m in models)):>10s}")
    return 0


def _train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``max_steps`` -> ``--max-steps``)."""
    import dataclasses
    import typing

    from convrnn.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag, tp = "--" + f.name.replace("_", "-"), hints[f.name]
        args = typing.get_args(tp)
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif typing.get_origin(tp) is typing.Literal:
            p.add_argument(flag, choices=args, default=f.default)
        else:
            base = next((a for a in args if a is not type(None)), tp)
            conv = _or_none(base) if type(None) in args else base
            p.add_argument(flag, type=conv, default=f.default, metavar=f.name.upper())


def _or_none(base: type):
    """A flag type that also takes ``none`` (e.g. ``--clip-norm none``)."""

    def parse(text: str):
        return None if text.lower() == "none" else base(text)

    parse.__name__ = base.__name__
    return parse


# The main job: a quarter-width rgc_shallow on the built-in cluttered-digits task, 32 px.
DEMO = dict(
    model="rgc_shallow",
    data="clutter",
    out="runs/demo",
    epochs=3,
    width=0.25,
    batch_size=64,
    optimizer="adamw",
    lr=3e-3,
    weight_decay=1e-4,
    warmup_steps=50,
    workers=0,
)


def cmd_demo(args: argparse.Namespace) -> int:
    from convrnn.train.config import TrainConfig

    cfg = TrainConfig(**(DEMO | {"out": args.out, "epochs": args.epochs}))
    print(f"training {cfg.model} (width {cfg.width}) on the built-in cluttered digits for {cfg.epochs} epochs")
    return _train_and_report(cfg)


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from convrnn.train.config import TrainConfig

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    return _train_and_report(cfg)


def _train_and_report(cfg) -> int:
    from convrnn.train.trainer import train

    result = train(cfg)
    if result:
        _print_accuracy(result["top1_per_step"], result["top5_per_step"], 10.0)
        print(f"readout: top-1 {100 * result['decoded_top1']:.2f}%  ({result['n']} validation images)")
        if result.get("skipped_images"):
            print(f"skipped {result['skipped_images']} unreadable training images")
        print(f"run folder: {cfg.out}  (plot: {Path(cfg.out) / 'plots' / 'accuracy_per_step.png'})")
    return 0


def _print_accuracy(top1: list[float], top5: list[float], step_ms: float) -> None:
    print(f"{'step':>4s} {'ms':>9s} {'top-1':>7s} {'top-5':>7s}")
    for t, (a1, a5) in enumerate(zip(top1, top5, strict=True)):
        print(f"{t:4d} {f'{t * step_ms:.0f}-{(t + 1) * step_ms:.0f}':>9s} {100 * a1:7.2f} {100 * a5:7.2f}")


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from torch.utils.data import DataLoader

    from convrnn.data.images import ImageFolder
    from convrnn.train import evaluate

    if args.run is not None:
        return _eval_run(args)
    if args.data is None:
        raise UsageError("eval needs --data DIR (with --model) or --run DIR")
    model = _build(args)
    root = Path(args.data)
    folder = root / args.split if (root / args.split).is_dir() else root
    dataset = ImageFolder(folder, eval_transform(model.spec.image_size))
    if len(dataset.classes) != model.num_classes:
        raise UsageError(
            f"{str(folder)!r} has {len(dataset.classes)} classes but the model has {model.num_classes} outputs"
        )
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    acc = evaluate(model, loader, times=args.times, presentation=args.presentation, limit=args.limit)
    print(f"{model.spec.name} on {folder} ({acc.n} images)")
    print(f"{'step':>4s} {'ms':>9s} {'top-1':>7s} {'top-5':>7s}")
    for t, (a1, a5) in enumerate(zip(acc.top1, acc.top5)):
        lo, hi = model.step_window_ms(t)
        print(f"{t:4d} {f'{lo:.0f}-{hi:.0f}':>9s} {100 * a1:7.2f} {100 * a5:7.2f}")
    print(
        f"readout ({model.spec.readout.decoder}): top-1 {100 * acc.decoded_top1:.2f}  top-5 {100 * acc.decoded_top5:.2f}"
    )
    if args.json:
        out = Path(args.json)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps({"model": model.spec.name, "data": str(folder), **acc.as_dict()}, indent=2))
        tmp.replace(out)
    return 0


def _eval_run(args: argparse.Namespace) -> int:
    """Evaluate a training run's final weights (else its latest checkpoint) on its validation data."""
    import json

    from safetensors.torch import load_file
    from torch.utils.data import DataLoader

    from convrnn.train import evaluate
    from convrnn.train.checkpoint import load_latest
    from convrnn.train.config import TrainConfig
    from convrnn.train.data import build_datasets, collate, default_image_size
    from convrnn.train.plots import plot_accuracy
    from convrnn.train.trainer import build_model

    run = Path(args.run)
    if not (run / "config.yaml").exists():
        raise UsageError(f"--run {str(run)!r} holds no config.yaml: not a training run folder")
    cfg = TrainConfig.load(run / "config.yaml")
    image_size = cfg.image_size or default_image_size(cfg.data)
    _, val, classes = build_datasets(cfg.data, image_size, cfg.seed, cfg.train_size, cfg.val_size, False)
    model = build_model(cfg.model, len(classes), image_size, cfg.width)
    if (run / "final" / "model.safetensors").exists():
        model.load_state_dict(load_file(str(run / "final" / "model.safetensors")))
    else:
        latest = load_latest(run)
        if latest is None:
            raise UsageError(f"--run {str(run)!r} has no weights yet (no final/ and no checkpoint)")
        model.load_state_dict(latest[0])
    loader = DataLoader(val, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate)
    acc = evaluate(model, ((x, y) for x, y, _ in loader), times=args.times or cfg.times, limit=args.limit)
    print(f"{model.spec.name} ({run}) on its validation data ({acc.n} images)")
    _print_accuracy(acc.top1, acc.top5, model.spec.step_ms)
    print(
        f"readout ({model.spec.readout.decoder}): top-1 {100 * acc.decoded_top1:.2f}  top-5 {100 * acc.decoded_top5:.2f}"
    )
    plot = plot_accuracy([acc.as_dict()], run / "plots" / "eval_accuracy_per_step.png", title=run.name)
    print(f"plot: {plot}")
    out = Path(args.json) if args.json else run / "eval.json"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps({"model": model.spec.name, "run": str(run), **acc.as_dict()}, indent=2))
    tmp.replace(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convrnn", description="Task-driven convolutional recurrent models of the ventral stream."
    )
    p.add_argument("--version", action="version", version=f"convrnn {convrnn.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list the models in the zoo")
    s.add_argument("pattern", nargs="?", default="*", help="glob filter, e.g. '*rgc*'")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("spec", help="print or save a model's architecture spec")
    s.add_argument("model", help="zoo name")
    s.add_argument("--num-classes", type=int, default=None)
    s.add_argument("--image-size", type=int, default=None)
    s.add_argument("--width", type=float, default=None)
    s.add_argument("--out", type=Path, help="write YAML (.yaml) or JSON (.json) here")
    s.set_defaults(fn=cmd_spec, spec=None, weights=None)

    s = sub.add_parser("extract", help="features per area and time step for image files (default: sample photos)")
    s.add_argument("images", nargs="*", type=Path, help="image files (default: scikit-image's sample photos)")
    _model_args(s)
    s.add_argument("--presentation", default="neural", choices=("default", "neural", "constant"))
    s.add_argument("--times", type=int, default=None, help="steps (default: the presentation's)")
    s.add_argument("--areas", nargs="+", help="layers or areas (default: V4 pIT cIT-aIT IT)")
    s.add_argument("--out", type=Path, help="save the features (.npz)")
    s.add_argument("--seed", type=int, default=0, help="seed for the random initial weights")
    s.set_defaults(fn=cmd_extract)

    s = sub.add_parser("demo", help="the main job: train a small RGC on the built-in task, accuracy per step")
    s.add_argument("--out", default=DEMO["out"], help=f"run folder (default {DEMO['out']}; re-running resumes)")
    s.add_argument("--epochs", type=int, default=DEMO["epochs"])
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("convert", help="convert a reference TensorFlow checkpoint to .safetensors")
    s.add_argument("checkpoint", help="checkpoint prefix, e.g. ckpts/rgc_intermediate/model.ckpt")
    _model_args(s)
    s.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    s.set_defaults(fn=cmd_convert, spec=None, weights=None)

    s = sub.add_parser(
        "download",
        help="fetch, verify, convert and cache the reference's published weights",
        description="Fetch the published TF checkpoints of each model (resuming partial files), verify their "
        "checksums, convert them to .safetensors in the cache ($CONVRNN_HOME, else $XDG_CACHE_HOME/convrnn, else "
        "~/.cache/convrnn) and delete the TF files; models already there are not fetched again.",
    )
    s.add_argument("names", nargs="*", help="zoo names with published weights")
    s.add_argument("--all", action="store_true", help="every model with published weights")
    s.add_argument("--list", action="store_true", help="show what the cache holds and its size")
    s.add_argument("--offline", action="store_true", help="never use the network (also CONVRNN_OFFLINE=1)")
    s.add_argument("--keep-tf", action="store_true", help="keep the TF checkpoint files after the conversion")
    s.add_argument("--base-url", help="a mirror of the published folders (also CONVRNN_BASE_URL)")
    s.add_argument(
        "--num-classes", type=int, default=None, help="convert onto this architecture (default: the published one)"
    )
    s.add_argument("--image-size", type=int, default=None)
    s.add_argument("--width", type=float, default=None)
    s.set_defaults(fn=cmd_download)

    s = sub.add_parser("train", help="train a model (resumes if --out holds this run); works under torchrun")
    _train_flags(s)
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("eval", help="top-1/top-5 at every time step on an ImageNet-layout folder or a run")
    s.add_argument("--run", type=Path, help="a training run folder: evaluate its weights on its validation data")
    s.add_argument("--data", type=Path, help="a folder of class folders, or one holding --split")
    s.add_argument("--split", default="val", help="sub-folder of --data to use if present (default val)")
    _model_args(s)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--workers", type=int, default=2, help="data-loading processes")
    s.add_argument("--times", type=int, default=None, help="steps (default: the model's)")
    s.add_argument("--presentation", default=None, choices=("default", "neural", "constant"))
    s.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    s.add_argument("--json", type=Path, help="also write the numbers as JSON")
    s.set_defaults(fn=cmd_eval)

    from convrnn.search.cli import add_parser as add_search_parser

    add_search_parser(sub)

    from convrnn.neural.cli import add_commands as add_neural_commands

    add_neural_commands(sub, _model_args, _build)

    from convrnn.brainscore.plugin import add_command as add_brainscore_command

    add_brainscore_command(sub)

    from convrnn.experiment.cells import add_subcommand as add_experiment_cells

    s = sub.add_parser("experiment", help="reproduce the papers' comparisons at laptop scale (docs/results.md)")
    from convrnn.experiment.thesis.cli import add_subcommand as add_experiment_thesis

    experiments = s.add_subparsers(dest="experiment", required=True)
    add_experiment_cells(experiments)
    add_experiment_thesis(experiments)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, KeyError, FileNotFoundError, ImageError, TrainingError, CheckpointWriteError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"convrnn: {_one_line(str(msg))}", file=sys.stderr)
        return 2


def _one_line(msg: str) -> str:
    """The error itself: a DataLoader worker's error arrives as "Caught X in DataLoader worker process N"
    plus the worker's traceback, whose last line is the message (``module.X: text``)."""
    if msg.startswith("Caught ") and "Original Traceback" in msg:
        last = msg.strip().splitlines()[-1]
        head, sep, text = last.partition(": ")
        return text if sep and " " not in head else last
    return msg


if __name__ == "__main__":
    sys.exit(main())
