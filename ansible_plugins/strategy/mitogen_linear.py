"""Mitogen's `linear` strategy, found through ansible.cfg's strategy_plugins.

Mitogen keeps one Python interpreter per host for the whole run and runs modules in it, instead
of starting a fresh interpreter (and recompiling module_utils) for every task. On an aarch64
edge under emulation a task cost about 2.1 CPU-seconds the usual way and 0.3 with Mitogen, and a
slow real Jetson pays the same per-process start. The strategy itself lives in the installed
`mitogen` package (a dependency of the controller); this file only makes Ansible find it.
"""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

__all__ = ["StrategyModule"]
