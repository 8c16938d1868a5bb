"""FairSDE (selective demographic experts): the suite's reference method, its losses and ablations."""

from noharm.methods.fairsde import losses
from noharm.methods.fairsde.method import (FairSDE, FairSDEModel, FairSDENCE, FairSDENCENoDisc, FairSDENCENoVirt, FairSDENoDisc,
                                    FairSDENoDiv, FairSDENoVirt, FairSDEPredictor)

__all__ = ["FairSDE", "FairSDEModel", "FairSDENCE", "FairSDENCENoDisc", "FairSDENCENoVirt", "FairSDENoDisc", "FairSDENoDiv", "FairSDENoVirt", "FairSDEPredictor", "losses"]
