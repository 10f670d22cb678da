"""``xai`` command line: models, layers, predict, explain, visualize, precompute, config. Bad input: one
line on stderr, exit 2.

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


def _cmd_explain(args) -> None:
    from . import explain, profiles

    methods = explain.check_methods(args.method)  # bad input fails before anything heavy loads
    profiles.get(args.profile)
    check_spec(args)
    sources = explain.read_images(args.images)
    entry = load_entry(args)
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
    entry = load_entry(args)
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

    profile = profiles.get(args.config or args.profile)
    store = Store(args.out, profile=profile.name) if args.out else Store(profile=profile.name)
    studies.run(args.only, profile, store)


def _cmd_config(args) -> None:
    import yaml

    from .config import loader

    config = loader.load(args.config)  # every error: one line with the file, the key path, close matches
    if args.action == "check":
        print(f"{args.config}: valid ({len(config.models)} models, "
              f"{sum(1 for _, sc in config.studies if sc.enabled)} studies on)")
    else:
        print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True), end="")


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

    s = sub.add_parser("explain", help="attribution maps for photos: PNGs, raw values and a JSON record each")
    add_model_arguments(s)
    s.add_argument("images", nargs="+", metavar="IMAGE_OR_ID")
    s.add_argument("--method", nargs="+", help="attribution methods (default: gradient, integrated_gradients, "
                   "smoothgrad, grad_cam, occlusion, and a one-page comparison of them)")
    s.add_argument("--layer", help="CAM layer (default: the deepest layer of interest that moves the prediction)")
    s.add_argument("--target", default="top1", metavar="CLASS|top1", help="class name or index (default top1)")
    s.add_argument("--profile", default="full", help="whose method options: full (the report's), quick or smoke")
    s.add_argument("--out", default="explanations", help="output folder (default ./explanations)")
    s.set_defaults(func=_cmd_explain)

    s = sub.add_parser("visualize", help="feature visualization of classes or channels, the report's settings")
    add_model_arguments(s)
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--class", dest="class_units", nargs="+", metavar="NAME|IDX", help="classes to render")
    what.add_argument("--layer", help="a layer whose channels to render")
    s.add_argument("--channels", metavar="0-15", help="channels of --layer (default: the first 16)")
    s.add_argument("--steps", type=int, help="optimization steps (default: the report's)")
    s.add_argument("--size", type=int, help="render size in px (default: the report's, at most the input size)")
    s.add_argument("--seed", type=int, default=0, help="base seed; an image's is this plus its unit's index")
    s.add_argument("--out", default="visualizations", help="output folder (default ./visualizations)")
    s.set_defaults(func=_cmd_visualize)

    s = sub.add_parser("precompute", help="run the studies of a profile into book/_generated")
    s.add_argument("--profile", default="full", help="full, quick or smoke (default full)")
    s.add_argument("--config", metavar="FILE", help="a report config (YAML; see `xai config show full`), "
                                                   "instead of a shipped profile")
    s.add_argument("--only", nargs="*", help="only these studies")
    s.add_argument("--out", help="artifact folder (default book/_generated)")
    s.set_defaults(func=_cmd_precompute)

    s = sub.add_parser("config", help="check a report config, or show one with every default filled in")
    s.add_argument("action", choices=["check", "show"])
    s.add_argument("config", metavar="NAME_OR_FILE", help="full, quick, smoke, or a YAML file")
    s.set_defaults(func=_cmd_config)
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
