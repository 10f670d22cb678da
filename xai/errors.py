"""Errors that the CLI and the studies report as one clear line."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class XaiError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


class UnknownNameError(XaiError, KeyError):
    """A model, layer, class or image name that does not exist; suggests close matches."""

    def __init__(self, kind: str, name: object, choices: Iterable[str], hint: str = ""):
        self.kind, self.name = kind, name
        choices = [str(c) for c in choices]
        close = difflib.get_close_matches(str(name), choices, n=5, cutoff=0.5)
        if not close:
            # Substring matches catch the common case of a partial dotted name ("blocks.3").
            close = [c for c in choices if str(name).lower() in c.lower()][:5]
        msg = f"unknown {kind} {name!r}"
        if close:
            msg += f"; did you mean: {', '.join(close)}?"
        elif len(choices) <= 12:
            msg += f"; choose from: {', '.join(choices)}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class MissingDataError(XaiError):
    """A data file or package that is not on this machine, with how to get it."""


class NotApplicableError(XaiError):
    """A method that does not apply to a model (or to one of its layers), and why.

    Callers read the fields, never the message: ``activation`` names the activation type that rules a
    method out (Guided Backprop on GELU), ``layer`` the layer a layer method was asked to read.
    """

    def __init__(self, method: str, model: str, reason: str, *, activation: str | None = None,
                 layer: str | None = None):
        self.method, self.model, self.reason = method, model, reason
        self.activation, self.layer = activation, layer
        where = f" at layer {layer!r}" if layer is not None else ""
        super().__init__(f"{method} is not applicable to {model}{where}: {reason}")

    def fields(self) -> dict:
        """The refusal as JSON-able fields, for studies that record it."""
        return {"method": self.method, "model": self.model, "reason": self.reason,
                "activation": self.activation, "layer": self.layer}


class LayoutError(XaiError):
    """A layer output whose axes (channels, positions) cannot be known, so it cannot be read as a map."""

    def __init__(self, layer: str, shape: tuple[int, ...], reason: str):
        self.layer, self.shape, self.reason = layer, tuple(shape), reason
        super().__init__(f"layer {layer!r} with output shape {list(self.shape)} cannot be read as a map: {reason}")
