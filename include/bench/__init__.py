"""``make bench``: ragvault's data paths against their plain baselines, on the local servers.

``python -m bench`` generates the data, then runs every case's ragvault
side and its baseline alternately, each as a process of its own (``python -m bench.cases CASE SIDE``), and prints
the medians of each side's work (its time after its imports) and whole-process time, the median of the pairwise
work ratios and the peak RSS (from ``wait4``) of each side. The data lives under ``$RAGVAULT_BENCH_ROOT``, by default
``$RAGVAULT_DEVSTACK_DIR/bench``.
"""
