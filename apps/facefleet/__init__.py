"""facefleet: face capture on edge cameras, relayed over MQTT and stored in object storage."""

__version__ = "0.1.0"
