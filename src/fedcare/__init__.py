"""fedcare: federated learning across hospitals.

Patient records never leave a site; only model updates travel, as flat float32 vectors
with a layout. See DESIGN.md for the layers; the public Python API lives in
:mod:`fedcare.api`.
"""

__version__ = "0.1.0"
