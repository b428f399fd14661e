"""The paper's compression pipeline: a teacher's neurons distilled into compact students (``closedloop teacher``)."""
