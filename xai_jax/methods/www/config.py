"""WWW's hyper-parameters, option sets and output kinds (no JAX: the command line builds its flags from them)."""

from __future__ import annotations

import dataclasses

from xai_jax import config as C
from xai_jax.config import option
from xai_jax.errors import XaiJaxError

CONTRIBUTION_MODES = ("signed", "abs")
CLASS_BY = ("label", "prediction")
#: how minor concepts' crops are chosen: around the peak of the neuron's top-n images, or the paper's probe set of
#: crops re-ranked by the neuron's activation
MINOR_CROPS = ("peak", "probe")
#: the activation maps of final-layer neurons (``tap="logits"``): class activation maps or Grad-CAM
LOGIT_MAPS = ("cam", "gradcam")
#: the kinds of output a WWW result folder and a saved explanation are (see :mod:`xai_jax.outputs`)
KIND, EXPLANATION_KIND = "www", "www.explanation"

#: the fields each stage reads: a stage records them in the result it returns, and its command's flags are these
CONCEPT_FIELDS = ("n_examples", "alpha_major", "alpha_minor", "max_concepts", "crop_fraction", "prompt", "template",
                  "use_template", "acs", "minor_crops", "crop_grid", "neuron_chunk")
CONTRIBUTION_FIELDS = ("contribution", "class_by")
EXPLAIN_FIELDS = ("top_k", "percentile")


@dataclasses.dataclass(frozen=True)
class WWWConfig:
    """Hyper-parameters of WWW; the defaults are the paper's (and the authors' code where the paper is silent).

    Attributes:
      n_examples: top-n activating probe images per neuron (D_rep).
      alpha_major, alpha_minor: concept sensitivity of the adaptive selection (eq. 2).
      top_k: neurons shown per explanation.
      contribution: ``"signed"`` ``a * grad`` (authors' code) or ``"abs"`` (eq. 3 as printed).
      class_by: group training samples into classes by ``"label"`` or by the model's ``"prediction"``.
      percentile: concept regions are the pixels above this percentile of the upsampled activation map.
      crop_fraction: side of the minor-concept crops as a fraction of the image side.
      max_concepts: selected concepts listed per neuron (the best ones; the full count is kept).
      prompt: CLIP text for a concept, with ``{}`` where the concept goes.
      template: the bare template (its embedding is subtracted in the adaptive cosine score).
      use_template: embed each concept as ``prompt`` with the word in it; off (``--no-template``): the bare word
        (Table 5's first row).
      acs: score concepts by the adaptive cosine of eq. 1 (minus the bare template's cosine); off (``--no-acs``):
        by the plain mean cosine (Table 5's first two rows).
      minor_crops: ``"peak"``: crop each neuron's top-n images around its peak (default: n crops a neuron, each
        holding its strongest response); ``"probe"``: the paper's protocol, the whole probe set cut into
        ``crop_grid`` x ``crop_grid`` crops, re-ranked by the neuron's activation, its top n.
      crop_grid: crops per image side of the ``"probe"`` protocol.
      neuron_chunk: neurons scored per block (bounds the ``[chunk, concepts]`` score matrix in memory).
    """

    n_examples: int = option(40, low=1)
    alpha_major: float = option(0.95, low=0.0, high=1.0, low_open=True)
    alpha_minor: float = option(0.90, low=0.0, high=1.0, low_open=True)
    top_k: int = option(3, low=1)
    contribution: str = option("signed", choices=CONTRIBUTION_MODES)
    class_by: str = option("label", choices=CLASS_BY)
    percentile: float = option(70.0, low=0.0, high=100.0, high_open=True)
    crop_fraction: float = option(0.5, low=0.0, high=1.0, low_open=True)
    max_concepts: int = option(20, low=1)
    prompt: str = option("A photo of a {}")
    template: str = option("A photo of a")
    use_template: bool = option(True, negative="--no-template")
    acs: bool = option(True, negative="--no-acs")
    minor_crops: str = option("peak", choices=MINOR_CROPS)
    crop_grid: int = option(3, low=1)
    neuron_chunk: int = option(1024, low=1)

    def validate(self) -> None:
        """Raises :class:`XaiJaxError` (one line) for a value outside its bounds or choices, or a prompt without
        ``{}``."""
        C.check(self)
        if "{}" not in self.prompt:
            raise XaiJaxError(f"prompt must contain '{{}}' where the concept goes; got {self.prompt!r}")


def with_stage(recorded: WWWConfig, used: WWWConfig, fields) -> WWWConfig:
    """``recorded`` with the ``fields`` of one stage taken from the config that stage ran with."""
    return dataclasses.replace(recorded, **{name: getattr(used, name) for name in fields})
