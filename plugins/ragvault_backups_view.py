"""Registers ragvault's "Backups" view with Airflow (see ``ragvault.ui``): the one AirflowPlugin of the project.

Airflow's plugin loader imports this file from the plugins folder; the package it registers lives in
``plugins/ragvault/``, which the loader skips (``plugins/.airflowignore``).
"""

from airflow.plugins_manager import AirflowPlugin

from ragvault.ui import EXTERNAL_VIEW, FASTAPI_APP


class RagvaultBackupsView(AirflowPlugin):
    name = "ragvault_backups_view"
    fastapi_apps = [FASTAPI_APP]
    external_views = [EXTERNAL_VIEW]
