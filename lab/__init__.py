"""The fleet lab: real systemd hosts on this machine (systemd-nspawn), reachable by SSH.

`python -m lab up [--edges N]` boots one cloud host and N edge hosts on a private bridge and
writes `inventory/lab/hosts.yml`; `python -m lab down` removes all of it, also after a failed
or interrupted run. See the "fleet lab" recipe in the design notes.
"""
