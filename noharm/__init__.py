"""noharm: a benchmarking suite for fairness without harm.

The code lives in the repository's top-level folders and installs under this one name (setuptools
`package-dir`): `noharm.datasets`, `noharm.methods`, `noharm.bench`, `noharm.analysis`. This package itself
holds only what every layer shares: the plugin registry (`noharm.registry`) and the run-time settings
declared once (`noharm.settings`: precision, channels-last, selection metric).
"""

__version__ = "0.1.0"
