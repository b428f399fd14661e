"""``closedloop report``: one self-contained HTML page of what happened in one or more sessions."""

from closedloop.report.build import write_report

__all__ = ["write_report"]
