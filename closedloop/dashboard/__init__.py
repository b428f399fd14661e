"""The live dashboard: a web page that follows a session directory as it is written (``closedloop run
--dashboard``, ``closedloop watch SESSION``), reading only.

:mod:`~closedloop.dashboard.follow` reads what the session appends, :mod:`~closedloop.dashboard.snapshot`
makes what the page shows of it, :mod:`~closedloop.dashboard.server` serves the page
(:mod:`~closedloop.dashboard.page`), the snapshots and the pool's images under the rules of
:mod:`~closedloop.dashboard.access`; :mod:`~closedloop.dashboard.child` runs it beside a session.
"""

TOKEN_VARIABLE = "CLOSEDLOOP_DASHBOARD_TOKEN"  # the token of `closedloop watch` (not on its command line)
