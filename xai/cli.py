"""``xai`` command line: models, layers, predict, precompute. Bad input: one line on stderr, exit 2.

Every command that takes a model takes any spec (:func:`xai.models.load`): a registered or entry-point
name, ``timm/<name>[.<tag>]`` or ``torchvision/<name>[:<WEIGHTS>]``, with ``--weights FILE`` (a user's
checkpoint), ``--classes FILE`` (one class name per line) and ``--model-module pkg.mod[:fn]`` (a one-off
model function). :func:`add_model_arguments` and :func:`load_entry` give a new command the same options.
"""
from __future__ import annotations

import argparse
import sys

from .errors import XaiError

SPEC_HELP = ("a registered model (`xai models`), timm/<name>[.<tag>], or torchvision/<name>[:<WEIGHTS>]; "
             "with --model-module pkg.mod:fn, the name fn")


def add_model_arguments(p: argparse.ArgumentParser, *, spec: bool = True) -> None:
    """The model options every model-taking command shares (``spec``: the positional SPEC too)."""
    if spec:
        p.add_argument("model", metavar="SPEC", help=SPEC_HELP)
    p.add_argument("--weights", metavar="FILE", help="a checkpoint to load: safetensors, or a state dict "
                                                     "(read with weights_only=True)")
    p.add_argument("--classes", metavar="FILE", help="class names, one per line (default: the model's own, "
                                                     "else numbered)")
    p.add_argument("--model-module", metavar="MOD[:FN]", action="append", default=[],
                   help="import MOD first (its @xai.models.register calls run); with :FN, FN is the model "
                        "function, named FN")
    p.add_argument("--budget", help="training budget of a model trained here (Fashion-MNIST): full or smoke")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA when present)")


def import_model_modules(args) -> None:
    from . import models

    for target in getattr(args, "model_module", []) or []:
        models.import_model_module(target)


def check_spec(args) -> None:
    """Fail fast on a bad spec, before anything heavy loads."""
    from . import models

    import_model_modules(args)
    models.check(args.model)
    if args.budget is not None and "budget" not in models.loader_options(args.model):
        raise XaiError(f"{args.model} is not trained here: it takes no --budget")


def load_entry(args):
    """The model entry that the parsed options of :func:`add_model_arguments` name."""
    from . import models

    import torch

    check_spec(args)
    if args.device is not None:
        try:
            torch.device(args.device)
        except RuntimeError as e:
            raise XaiError(f"unknown device {args.device!r}: {e}") from e
    options = {"budget": args.budget} if args.budget is not None else {}
    if "progress" in models.loader_options(args.model):
        options["progress"] = sys.stderr.isatty()
    return models.load(args.model, weights=args.weights, classes=args.classes, device=args.device, **options)


def _cmd_models(args) -> None:
    from . import models

    import_model_modules(args)
    for name in models.list(args.label_space):
        print(f"{name:22s} {models.describe(name)}")
    print("(any timm or torchvision classifier too: timm/<name>[.<tag>], torchvision/<name>[:<WEIGHTS>])")


def _cmd_layers(args) -> None:
    from .layers import layer_table

    entry = load_entry(args)
    interest = set(entry.layers)
    for name, shape, layout in layer_table(entry.model, entry.input_size):
        if args.all or "." not in name or name in interest or name.count(".") <= 1:
            mark = "*" if name in interest else " "
            print(f"{mark} {name:40s} {'x'.join(map(str, shape)):>16s}  {layout.describe()}")
    print(f"(* = layers of interest, shallow -> deep; input {'x'.join(map(str, entry.input_size))}; layouts: NCHW "
          f"maps, NHWC channels-last maps, tokens prefix+rows x columns; --all lists every module)")


def _cmd_predict(args) -> None:
    import torch

    from .data.images import resolve

    check_spec(args)  # fail fast on bad input, before anything heavy loads
    pictures = [resolve(i) for i in args.images]
    entry = load_entry(args)
    batch = torch.stack([entry.prepare(p) for p in pictures])
    for image, top in zip(args.images, entry.predict(batch, k=args.k)):
        print(image)
        for idx, name, p in top:
            print(f"  {p:6.2%}  {name} ({idx})")


def _cmd_precompute(args) -> None:
    from . import profiles, studies
    from .render.store import Store

    profile = profiles.get(args.profile)
    store = Store(args.out, profile=profile.name) if args.out else Store(profile=profile.name)
    studies.run(args.only, profile, store)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xai", description="Explainability report for image classifiers.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list the registered models (and those of installed packages)")
    s.add_argument("--label-space", help="only models with this label space (e.g. imagenet-1k, fashion-mnist)")
    s.add_argument("--model-module", metavar="MOD[:FN]", action="append", default=[],
                   help="import MOD first, so that the models it registers are listed")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser("layers", help="a model's layer names, output shapes and layouts")
    add_model_arguments(s)
    s.add_argument("--all", action="store_true", help="every module, not only the top levels")
    s.set_defaults(func=_cmd_layers)

    s = sub.add_parser("predict", help="top-k predictions for photos (manifest ids or files)")
    add_model_arguments(s)
    s.add_argument("images", nargs="+", metavar="IMAGE_OR_ID")
    s.add_argument("-k", type=int, default=5, help="how many classes (default 5)")
    s.set_defaults(func=_cmd_predict)

    s = sub.add_parser("precompute", help="run the studies of a profile into book/_generated")
    s.add_argument("--profile", default="full", help="full, quick or smoke (default full)")
    s.add_argument("--only", nargs="*", help="only these studies")
    s.add_argument("--out", help="artifact folder (default book/_generated)")
    s.set_defaults(func=_cmd_precompute)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except XaiError as e:
        print(f"xai: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xai: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
