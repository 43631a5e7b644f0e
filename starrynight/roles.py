"""The roles a channel can play, per arm, and the one rule naming nuclear stains.

Kept apart from :mod:`starrynight.experiment` (which validates roles against the index)
and :mod:`starrynight.presets` (which maps dye names onto roles), so both can use them
without importing each other.
"""

from __future__ import annotations

import re

CP_ROLES = ("nuclei", "cell", "mito")
#: Roles every CP experiment must fill; the others may be left empty ("" is dropped).
CP_REQUIRED = ("nuclei", "cell")
SBS_ROLES = ("nuclei", "A", "C", "G", "T")

#: Names of nuclear stains: the one guess of a nuclear channel, wherever one is needed.
NUCLEAR_NAMES = re.compile(r"dapi|hoechst|dna|draq|nuc", re.IGNORECASE)
