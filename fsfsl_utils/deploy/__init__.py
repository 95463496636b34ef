"""Putting a trained model to work: save and load it (:mod:`.bundle`), choose its operating point
without peeking (:mod:`.operating`), see where it looks (:mod:`.cam`) and export it for an
inspection station (:mod:`.exporting`). The command lines are ``python -m fsfsl_utils.predict`` and
``python -m fsfsl_utils.export``."""

from .bundle import EndToEnd, ModelError, SavedModel, from_fit, load, save
from .operating import Requirement, parse_requirement, reading, threshold_for

__all__ = ("EndToEnd", "ModelError", "Requirement", "SavedModel", "from_fit", "load", "parse_requirement", "reading",
           "save", "threshold_for")
