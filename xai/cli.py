"""``xai`` command line: models, layers, predict, explain, visualize, precompute. Bad input: one line on
stderr, exit 2."""
from __future__ import annotations

import argparse
import sys

from .errors import UnknownNameError, XaiError


def _cmd_models(args) -> None:
    from . import models

    for name in models.list(args.family):
        print(f"{name:22s} {models.family(name)}")


def _cmd_layers(args) -> None:
    from . import models
    from .layers import layer_shapes

    entry = _load(args.model, args)
    shapes = layer_shapes(entry.model, entry.input_size)
    interest = set(entry.layers)
    for name, shape in shapes:
        if args.all or "." not in name or name in interest or name.count(".") <= 1:
            mark = "*" if name in interest else " "
            print(f"{mark} {name:40s} {'x'.join(map(str, shape))}")
    print("(* = layers of interest, shallow -> deep; --all lists every module)")
    del models


def _cmd_predict(args) -> None:
    import torch

    from .data.images import resolve

    from . import models

    models.family(args.model)  # fail fast on bad input, before anything heavy loads
    pictures = [resolve(i) for i in args.images]
    entry = _load(args.model, args)
    batch = torch.stack([entry.prepare(p) for p in pictures])
    for image, top in zip(args.images, entry.predict(batch, k=args.k)):
        print(image)
        for idx, name, p in top:
            print(f"  {p:6.2%}  {name} ({idx})")


def _cmd_explain(args) -> None:
    from . import explain, profiles

    methods = explain.check_methods(args.method)  # bad input fails before anything heavy loads
    profiles.get(args.profile)
    sources = explain.read_images(args.images)
    entry = _load(args.model, args)
    result = explain.explain(entry, sources, methods, spec=args.model, layer=args.layer, target=args.target,
                             profile=args.profile, progress=None)
    explain.write(result, args.out)
    print("\n".join(explain.report(result, args.out)))
    if len(result.refusals()) == len(result.explanations):
        raise XaiError(result.explanations[0].summary["not_applicable"])


def _cmd_visualize(args) -> None:
    from . import visualize

    if args.channels is not None and args.layer is None:
        raise XaiError("--channels needs --layer")
    channels = visualize.parse_channels(args.channels) if args.channels is not None else None
    entry = _load(args.model, args)
    common = {"spec": args.model, "steps": args.steps, "size": args.size, "seed": args.seed, "progress": None}
    if args.layer is not None:
        vis = visualize.visualize_channels(entry, args.layer, channels, **common)
    else:
        vis = visualize.visualize_classes(entry, args.class_units, **common)
    visualize.write(vis, args.out)
    print("\n".join(visualize.report(vis, args.out)))


def _cmd_precompute(args) -> None:
    from . import profiles, studies
    from .render.store import Store

    profile = profiles.get(args.profile)
    store = Store(args.out, profile=profile.name) if args.out else Store(profile=profile.name)
    studies.run(args.only, profile, store)


def _load(name: str, args):
    """The one place the CLI gets a model; ``--weights``, ``--classes`` and ``--model-module`` pass through."""
    import inspect

    from . import models

    options = {}
    if models.family(name) == "fmnist":
        options["budget"] = getattr(args, "budget", "full")
    accepted = inspect.signature(models.load).parameters
    for key in ("weights", "classes", "model_module"):
        value = getattr(args, key, None)
        if value is not None:
            if key not in accepted:  # never drop a user's option silently
                raise XaiError(f"--{key.replace('_', '-')} {value}: not supported by this version's model loader")
            options[key] = value
    return models.load(name, device=_device(args), **options)


def _device(args) -> str | None:
    device = getattr(args, "device", None)
    if device is None:
        return None
    if device not in ("cpu", "cuda"):
        raise UnknownNameError("device", device, ["cpu", "cuda"])
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise XaiError("--device cuda: no CUDA device on this machine")
    return device


def _add_model_options(s: argparse.ArgumentParser, budget_help: str) -> None:
    s.add_argument("--weights", metavar="PATH", help="a weights file (safetensors or a state dict) for the model")
    s.add_argument("--classes", metavar="FILE", help="class names, one per line, for a checkpoint with its own head")
    s.add_argument("--model-module", metavar="PKG.MOD:FN", help="a function that builds your model")
    s.add_argument("--device", help="cpu or cuda (default: CUDA when present)")
    s.add_argument("--budget", default="full", help=budget_help)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xai", description="Explainability report for image classifiers.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list the registered models")
    s.add_argument("--family", choices=["imagenet", "fmnist"], help="only this family")
    s.set_defaults(func=_cmd_models)

    budget_help = "training budget of a Fashion-MNIST model: full or smoke (default full)"
    s = sub.add_parser("layers", help="a model's layer names and output shapes")
    s.add_argument("model")
    s.add_argument("--all", action="store_true", help="every module, not only the top levels")
    s.add_argument("--budget", default="full", help=budget_help)
    s.set_defaults(func=_cmd_layers)

    s = sub.add_parser("predict", help="top-k predictions for photos (manifest ids or files)")
    s.add_argument("model")
    s.add_argument("images", nargs="+", metavar="IMAGE_OR_ID")
    s.add_argument("-k", type=int, default=5, help="how many classes (default 5)")
    s.add_argument("--budget", default="full", help=budget_help)
    s.set_defaults(func=_cmd_predict)

    s = sub.add_parser("explain", help="attribution maps for photos: PNGs, raw values and a JSON record each")
    s.add_argument("model", metavar="SPEC")
    s.add_argument("images", nargs="+", metavar="IMAGE_OR_ID")
    s.add_argument("--method", nargs="+", help="attribution methods (default: gradient, integrated_gradients, "
                   "smoothgrad, grad_cam, occlusion, and a one-page comparison of them)")
    s.add_argument("--layer", help="CAM layer (default: the deepest layer of interest that moves the prediction)")
    s.add_argument("--target", default="top1", metavar="CLASS|top1", help="class name or index (default top1)")
    s.add_argument("--profile", default="full", help="whose method options: full (the report's), quick or smoke")
    s.add_argument("--out", default="explanations", help="output folder (default ./explanations)")
    _add_model_options(s, budget_help)
    s.set_defaults(func=_cmd_explain)

    s = sub.add_parser("visualize", help="feature visualization of classes or channels, the report's settings")
    s.add_argument("model", metavar="SPEC")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--class", dest="class_units", nargs="+", metavar="NAME|IDX", help="classes to render")
    what.add_argument("--layer", help="a layer whose channels to render")
    s.add_argument("--channels", metavar="0-15", help="channels of --layer (default: the first 16)")
    s.add_argument("--steps", type=int, help="optimization steps (default: the report's)")
    s.add_argument("--size", type=int, help="render size in px (default: the report's, at most the input size)")
    s.add_argument("--seed", type=int, default=0, help="base seed; an image's is this plus its unit's index")
    s.add_argument("--out", default="visualizations", help="output folder (default ./visualizations)")
    _add_model_options(s, budget_help)
    s.set_defaults(func=_cmd_visualize)

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
