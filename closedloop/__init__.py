"""closedloop: closed-loop visual neurophysiology (present, acquire, align, model, select, record)."""

from closedloop.liblsl import quiet_liblsl

quiet_liblsl()  # before any module of the package touches LSL, in this process and in its workers
