"""saner_kernels: fused SANER and SAM optimizers for PyTorch.

from saner_kernels import SANER, SAM, AlphaScheduler, available_backends
and the SANER authors' classes: FriendlySANER, VASSOSANER, GSANER, SAMWO, SAMONLY, SANERLAST
"""

from .authors import GSANER, SAMONLY, SAMWO, SANERLAST, VASSOSANER, FriendlySANER
from .ops import available_backends
from .optimizer import SAM, SANER
from .schedule import AlphaScheduler, scheduled_alpha

__all__ = [
    "SANER",
    "SAM",
    "FriendlySANER",
    "VASSOSANER",
    "GSANER",
    "SAMWO",
    "SAMONLY",
    "SANERLAST",
    "AlphaScheduler",
    "scheduled_alpha",
    "available_backends",
]
__version__ = "0.1.0"
