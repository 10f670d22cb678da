"""``xai`` command line: models, layers, predict, precompute. Bad input: one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import sys

from .errors import XaiError


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


def _cmd_precompute(args) -> None:
    from . import profiles, studies
    from .render.store import Store

    profile = profiles.get(args.profile)
    store = Store(args.out, profile=profile.name) if args.out else Store(profile=profile.name)
    studies.run(args.only, profile, store)


def _load(name: str, args):
    from . import models

    options = {}
    if models.family(name) == "fmnist":
        options["budget"] = getattr(args, "budget", "full")
    return models.load(name, **options)


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
