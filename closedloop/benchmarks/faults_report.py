"""Tables and totals of the fault-injection benchmark."""

from __future__ import annotations

from rich.table import Table


def totals(kills: list[dict], scenarios: list[dict]) -> dict:
    """Presentations recorded before the kills, lost after resume, resume successes, orphans, hangs.

    ``lost`` counts the kills' presentations recorded before and missing (or duplicated) after
    resume; the single runs' unanswered presentations are in their own rows.
    """
    killed = [r for r in kills if r["killed"]]
    return {
        "kills": len(killed),
        "presentations_recorded": sum(r["markers_before"] for r in killed),
        "responses_recorded": sum(r["responses_before"] for r in killed),
        "lost": sum(r["lost"]["lost"] for r in killed),
        "resume_successes": sum(bool(r.get("resumed")) for r in killed),
        "unanswered_after_resume": sum(len(r.get("unanswered", [])) for r in killed),
        "orphans": sum(len(r.get("orphans", [])) + len(r.get("resume_orphans", [])) for r in kills)
        + sum(len(r.get("orphans", [])) for r in scenarios),
        "orphans_alive_after_resume": sum(len(r.get("orphans_at_end", [])) for r in killed),
        "hangs": sum(bool(r.get("hang")) for r in kills + scenarios),
    }


def _roles(processes: list[dict]) -> str:
    return ", ".join(p["role"] for p in processes) or "-"


def kill_table(rows: list[dict]) -> Table:
    """One row per kill -9 and its resume."""
    table = Table(title="kill -9 of the run, then resume")
    for column in ("#", "phase", "at s", "children at kill", "recorded m/r", "orphans", "resume", "lost",
                   "unanswered", "hang"):
        table.add_column(column)
    for r in rows:
        if not r["killed"]:
            table.add_row(str(r["kill"]), r["phase"], "-", "-", "-", "-", f"not killed: run ended ({r.get('error')})",
                          "-", "-", str(r["hang"]))
            continue
        resume = (f"{r.get('status')} in {r.get('resume_s')} s" + ("" if r.get("resumed") else
                                                                    f" (incomplete: {r.get('error')})")
                  if "status" in r else "no session")
        table.add_row(str(r["kill"]), f"{r['phase']} +{r['delay_s']} s", str(r["at_s"]), ", ".join(r["children"]) or "-",
                      f"{r['markers_before']}/{r['responses_before']}", _roles(r["orphans"]), resume,
                      str(r["lost"]["lost"]), str(r.get("unanswered", [])), str(r["hang"]))
    return table


def _details(r: dict) -> str:
    parts = []
    if "gap_responses" in r:
        parts.append(f"gap responses {r['gap_responses']}, requeued {r['requeued']}, unanswered or missing "
                     f"{r['lost']}")
    if r.get("events"):
        parts.append("events " + ", ".join(f"{k} {v}" for k, v in r["events"].items()))
    if r.get("alignment"):
        parts.append("spikes/response vs before: " + ", ".join(f"{k} {v}" for k, v in r["alignment"]["ratio"].items()))
    if "traceback" in r:
        parts.append(f"traceback {r['traceback']}, 'Aborted!' {r['aborted_line']}, summary {r['summary_status']}"
                     f" {'with' if r['summary_counts'] else 'without'} counts")
    if "restarts" in r:
        parts.append(f"restarts done {r['restarts']}")
    return "; ".join(parts)


def scenario_table(rows: list[dict]) -> Table:
    """One row per single-run scenario (see :func:`scenario_notes` for the details)."""
    table = Table(title="faults during one run")
    for column in ("scenario", "exit", "status", "presented/responses", "s", "orphans", "hang"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["scenario"], str(r.get("exit")), str(r.get("status")),
                      f"{r.get('presented')}/{r.get('responses')}", str(r.get("seconds")),
                      _roles(r.get("orphans", [])), str(r.get("hang")))
    return table


def scenario_notes(rows: list[dict]) -> list[str]:
    """A line of details per single-run scenario, with its error line."""
    return [f"{r['scenario']}: {_details(r)}" + (f"; error: {r['error']}" if r.get("error") else "") for r in rows]


def totals_table(figures: dict) -> Table:
    """The totals, aims beside them."""
    aims = {"lost": "0", "orphans": "0", "hangs": "0", "resume_successes": str(figures["kills"])}
    table = Table(title="totals")
    for column in ("figure", "value", "aim"):
        table.add_column(column)
    for key, value in figures.items():
        table.add_row(key.replace("_", " "), str(value), aims.get(key, ""))
    return table
