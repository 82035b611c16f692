"""GeeCache-rs's load suite: `load/bench.sh SCENARIO` runs `python3 -m bench.SCENARIO`."""
