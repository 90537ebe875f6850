"""``make bench``: ragvault's data paths against their plain baselines, on the local servers.

``python -m bench`` generates the data (under ``$RAGVAULT_DEVSTACK_DIR/bench``), then runs every case's ragvault
side and its baseline alternately, each as a process of its own (``python -m bench.cases CASE SIDE``), and prints
the medians of wall time, the median of the pairwise ratios and the peak RSS (from ``wait4``) of each side.
"""
