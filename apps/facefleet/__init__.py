"""facefleet: face capture on edge cameras, relayed over MQTT and stored in object storage."""

from importlib.metadata import PackageNotFoundError, version

try:
    #: The installed distribution's version (the wheel's, local label included, e.g.
    #: 0.1.0+hotfix1): what every heartbeat reports and the health gate compares.
    __version__ = version("facefleet")
except PackageNotFoundError:  # sources on sys.path without an install
    __version__ = "0+unknown"
