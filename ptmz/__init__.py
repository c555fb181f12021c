"""ptmz: train phase-transition model zoos and measure their loss landscapes."""

__version__ = "0.1.0"
