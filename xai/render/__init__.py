"""Figures, colormaps, overlays and the artifact store."""
