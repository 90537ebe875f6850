"""The Airflow UI's "Backups" view: the bucket's catalog, one backup's details, and the way to its restore.

An Airflow 3 plugin (registered by ``plugins/ragvault_backups_view.py``): a FastAPI app mounted by the API server at
``/ragvault`` and an external view in the UI's navigation that shows its page in the UI. The pages are rendered on
the server from ``ragvault.catalog`` (what ``ragvault list`` and ``ragvault show`` print); the same data is served
as JSON under ``/ragvault/api/``. Every endpoint needs a signed-in user allowed to read the backup DAG (the UI's
session cookie, or a bearer token), checked by Airflow's own auth manager.

Links are relative, so the pages work behind a proxy that serves Airflow under a path of its own.
"""

from __future__ import annotations

import html
import json
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse

from ragvault.cli import human

BACKUP_DAG, RESTORE_DAG = "intelligence_backup", "intelligence_restore"


def _read_access() -> Any:
    """Airflow's check that the caller may read the backup DAG (imported here: only the API server needs it)."""
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag("GET", param_dag_id=BACKUP_DAG))


app = FastAPI(title="ragvault backups", description="The backups in the bucket (ragvault's catalog)",
              dependencies=[_read_access()])


def _repository():
    from ragvault.config import load_settings
    from ragvault.repository import BackupRepository

    return BackupRepository.from_settings(load_settings())


def _backup(date: str) -> dict[str, Any]:
    from ragvault.catalog import BackupNotFound, describe, read_backup
    from ragvault.repository import check_date

    try:
        check_date(date)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    try:
        return describe(read_backup(_repository(), date))
    except BackupNotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


def _backups() -> tuple[str, list[dict[str, Any]]]:
    from ragvault.catalog import list_backups

    repo = _repository()
    return repo.bucket, list_backups(repo)


@app.get("/api/backups")
def backups_json() -> list[dict[str, Any]]:
    """Every date of the bucket, as ``ragvault list --json`` prints them."""
    return _backups()[1]


@app.get("/api/backups/{date}")
def backup_json(date: str) -> dict[str, Any]:
    """One backup, as ``ragvault show DATE --json`` prints it."""
    return _backup(date)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1a202c; }
h1 { font-size: 1.4rem; margin: 0 0 .3rem; } h2 { font-size: 1.1rem; margin-top: 1.5rem; }
p.note { color: #4a5568; margin: .2rem 0 1rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e2e8f0; vertical-align: top; }
th { background: #f7fafc; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.complete { color: #276749; } .incomplete { color: #9c4221; } .failed { color: #c53030; font-weight: 600; }
a.button { display: inline-block; padding: .4rem .8rem; border-radius: .3rem; background: #2b6cb0; color: white;
           text-decoration: none; margin-right: .5rem; }
code { background: #edf2f7; padding: 0 .25rem; border-radius: .2rem; }
"""


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                        f"<style>{STYLE}</style></head><body>{body}</body></html>")


def _cell(value: Any, css: str = "") -> str:
    return f"<td{f' class={css!r}' if css else ''}>{html.escape(str(value))}</td>"


@app.get("/backups", response_class=HTMLResponse)
def backups_page() -> HTMLResponse:
    """The catalog: one row a date, newest first, each complete date linking to its details."""
    bucket, entries = _backups()
    rows = []
    for entry in reversed(entries):
        date = html.escape(entry["date"])
        status = "complete" if entry["complete"] else ("unreadable" if entry["problem"] else "incomplete")
        modes: dict[str, list[str]] = {}
        for name, mode in entry["components"].items():
            modes.setdefault(mode, []).append(name)
        check = entry["verification"]
        verified = f"{check['result']} {check['verified_at'][:16]}" if check else "never"
        link = f"<a href='backups/{date}'>{date}</a>" if entry["complete"] else date
        components = "; ".join(mode + ": " + ", ".join(names) for mode, names in sorted(modes.items())) or "-"
        rows.append(
            f"<tr data-date='{date}'><td>{link}</td>{_cell(status, status)}"
            f"{_cell((entry['state_captured_at'] or '-')[:19])}"
            f"{_cell(components)}"
            f"{_cell('-' if entry['artifacts'] is None else entry['artifacts'], 'num')}"
            f"{_cell(human(entry['size']), 'num')}"
            f"{_cell(verified, 'failed' if check and check['result'] != 'ok' else '')}</tr>")
    complete = sum(1 for e in entries if e["complete"])
    body = (f"<h1>Backups</h1><p class='note'>s3://{html.escape(bucket)}: {complete} complete, "
            f"{len(entries) - complete} incomplete, {human(sum(e['size'] or 0 for e in entries))} stored. "
            "A date without a manifest is incomplete and never offered for restore.</p>"
            "<table><thead><tr><th>date</th><th>status</th><th>state captured</th><th>components</th>"
            "<th>artifacts</th><th>size</th><th>verified</th></tr></thead><tbody>"
            + ("".join(rows) or "<tr><td colspan='7'>The bucket holds no backup yet.</td></tr>")
            + "</tbody></table>")
    return _page("Backups", body)


@app.get("/backups/{date}", response_class=HTMLResponse)
def backup_page(date: str) -> HTMLResponse:
    """One backup: the run, the state, per component and item the counts and sizes; the way to restore it."""
    details = _backup(date)
    run, state = details["run"], details["state"]
    date = html.escape(details["date"])
    rows = []
    for name, component in details["components"].items():
        for number, (item, entry) in enumerate((component["items"] or {"-": None}).items()):
            counts = ", ".join(f"{k} {v}" for k, v in (entry or {}).get("counts", {}).items()) or "-"
            first = number == 0
            rows.append(
                f"<tr data-component='{html.escape(name)}'>{_cell(name if first else '')}"
                f"{_cell(component['mode'] if first else '')}"
                f"{_cell((component['source_version'] or '-') if first else '')}{_cell(item)}{_cell(counts)}"
                f"{_cell(entry['artifacts'] if entry else 0, 'num')}"
                f"{_cell(human(entry['size'] if entry else 0), 'num')}"
                f"{_cell(human(entry['raw_size'] if entry else 0), 'num')}</tr>")
    captured = f"state captured at {state.get('captured_at')}" if state.get("captured_at") else "no state captured"
    body = (
        f"<p><a href='../backups'>&larr; all backups</a></p><h1>Backup {date}</h1>"
        f"<p class='note'>{details['artifacts']} artifacts, {human(details['size'])}, written "
        f"{html.escape(str(details['created_at']))} by run <code>{html.escape(str(run.get('run_id')))}</code>; "
        f"{html.escape(captured)}{' - ' + html.escape(state['reason']) if state.get('reason') else ''}</p>"
        + _restore_form(details)
        + "<h2>Contents</h2><table><thead><tr><th>component</th><th>mode</th><th>version</th><th>item</th>"
        "<th>counts</th><th>artifacts</th><th>stored</th><th>original</th></tr></thead><tbody>" + "".join(rows)
        + "</tbody></table>")
    return _page(f"Backup {details['date']}", body)


def _restore_form(details: dict[str, Any]) -> str:
    """The restore DAG's form for this date: its components to choose, dry run on by default, the confirmation."""
    date = html.escape(details["date"])
    boxes = "".join(
        f"<label><input type='checkbox' name='components' value='{html.escape(name)}' checked> "
        f"{html.escape(name)}</label> " for name in details["components"]
        if details["components"][name]["items"])
    return (
        f"<h2>Restore</h2><form method='post' action='{date}/restore' id='restore'>"
        f"<p>Triggers <code>{RESTORE_DAG}</code> with <code>backup_date</code> {date}.</p><p>{boxes}</p>"
        "<p><label><input type='checkbox' name='dry_run' value='true' checked> Dry run (verify every checksum and "
        "print the plan; write nothing)</label></p>"
        "<p><label>Confirm overwrite <input name='confirm' placeholder='YYYY-MM-DD' size='12'></label> (only to "
        "restore over targets that already hold data: type the backup date)</p>"
        "<p><button type='submit' class='button'>Trigger the restore</button></p></form>")


def _own_address(request: Request) -> str:
    """This API server as it listens (its socket's address and Airflow's path), never the request's Host header:
    a caller cannot point the trigger at another server."""
    host, port = request.scope["server"]
    host = f"[{host}]" if ":" in host else host
    root = request.scope.get("root_path", "").removesuffix(FASTAPI_APP["url_prefix"])
    return f"{request.url.scheme}://{host}:{port}{root}"


@app.post("/backups/{date}/restore", response_class=HTMLResponse)
def restore(date: str, request: Request, components: Annotated[list[str], Form()] = (),
            dry_run: Annotated[bool, Form()] = False, confirm: Annotated[str, Form()] = "") -> HTMLResponse:
    """Trigger the restore DAG for ``date`` through Airflow's own REST API, as the signed-in user: Airflow checks
    the user may trigger it, and validates the conf against the DAG's params, as its own form does."""
    import requests
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    details = _backup(date)
    conf = {"backup_date": details["date"], "components": list(components), "dry_run": dry_run,
            "confirm": confirm.strip() or None}
    auth = request.headers.get("authorization") or f"Bearer {request.cookies.get(COOKIE_NAME_JWT_TOKEN, '')}"
    try:
        answer = requests.post(f"{_own_address(request)}/api/v2/dags/{RESTORE_DAG}/dagRuns",
                               json={"logical_date": None, "conf": conf},
                               headers={"Authorization": auth}, timeout=30)
    except requests.RequestException as exc:
        raise HTTPException(status_code=502, detail=f"Airflow's API did not answer: {exc}") from None
    back = f"<p><a href='../{html.escape(details['date'])}'>&larr; backup {html.escape(details['date'])}</a></p>"
    if answer.status_code != 200:
        detail = answer.json().get("detail") if answer.headers.get("content-type", "").startswith(
            "application/json") else answer.text
        return _page("Restore refused", back + f"<h1>The restore was not triggered</h1><p class='failed' "
                     f"id='outcome'>Airflow answered HTTP {answer.status_code}: {html.escape(str(detail))}</p>")
    run = answer.json()
    return _page("Restore triggered", back + (
        f"<h1>Restore of {html.escape(details['date'])} triggered</h1><p id='outcome'>Run "
        f"<code>{html.escape(run['dag_run_id'])}</code> of <code>{RESTORE_DAG}</code> is {html.escape(run['state'])}"
        f"{' (dry run: nothing is written)' if dry_run else ''}: follow it under Dags, {RESTORE_DAG}.</p>"
        f"<p>conf: <code>{html.escape(json.dumps(conf))}</code></p>"))


#: what the plugin registers (see ``plugins/ragvault_backups_view.py``)
FASTAPI_APP = {"app": app, "url_prefix": "/ragvault", "name": "ragvault backups"}
EXTERNAL_VIEW = {"name": "Backups", "href": "ragvault/backups", "destination": "nav", "url_route": "backups",
                 "category": "browse"}
