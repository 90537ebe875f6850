"""ragvault: back up and restore the whole intelligence of an AI/RAG stack with Apache Airflow.

Modules: :mod:`ragvault.config` (settings), :mod:`ragvault.repository` (bucket layout, manifest, checksums),
:mod:`ragvault.components` (one module per component of the stack), :mod:`ragvault.hooks` (connections and
clients), :mod:`ragvault.ingestion` (pause/resume), :mod:`ragvault.operators` (what the DAGs are wired from).
"""

__version__ = "0.1.0"
