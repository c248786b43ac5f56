"""facefleet monitor: the Textual terminal UI."""
