"""Concepts: what groups of units mean, tested and discovered.

- :mod:`.tcav`: TCAV (Kim et al. 2018), concept activation vectors and the paper's significance test;
- :mod:`.sources`: concept images that can be made offline (textures, colours, photo crops, markers);
- :mod:`.nmf` and :mod:`.discovery`: concepts found by non-negative factorization (DFF, CRAFT);
- :mod:`.dissection`: network dissection (Bau et al. 2017) on a concept with known pixels;
- :mod:`.crp`: concept-conditional heatmaps (CRP) by LRP (zennit), or by gradient x activation where LRP has no rules;
- :mod:`.taps`: a layer's activations and the score's gradient there, batched.
"""
from . import crp, discovery, dissection, nmf, sources, taps, tcav
from .crp import ConditionalHeatmaps, GradientTimesActivation, conditional_heatmaps
from .discovery import Concepts, discover, factor_relevance, locate, localisation
from .dissection import Dissection, dissect
from .nmf import Factorization, nmf_transform
from .tcav import CavBank, ConceptTest, TcavResult, fit_cav, score, significance, tcav_scores, train_cavs

__all__ = ["crp", "discovery", "dissection", "nmf", "sources", "taps", "tcav", "ConditionalHeatmaps",
           "GradientTimesActivation", "conditional_heatmaps", "Concepts", "discover", "factor_relevance", "locate",
           "localisation", "Dissection", "dissect", "Factorization", "nmf_transform", "ConceptTest", "TcavResult",
           "fit_cav", "significance", "tcav_scores", "CavBank", "train_cavs", "score"]
