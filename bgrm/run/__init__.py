"""One way to run a batch: each input is one ``Task``, each task gives one ``Result``.

An ``Executor`` runs tasks somewhere: in this thread (``local.Inline``), on
threads of this process (``local.Threads``), on worker processes
(``processes.Processes``) or on a Dask cluster (``cluster.Cluster``). Each one
only starts tasks and emits what happens (``Progress``, ``Done``); what they
share is in ``run.base``, once, in ``Runner`` (``Executor.run`` is one job on
one), and each file is ``run_task`` with the work it is handed (by default
``process_task``: the file through ``bgrm.filejobs``):

- jobs come as they come (``submit``, ``cancel``, ``close``), results are tied
  to a job and a file number, and ``--skip-existing`` is decided at submit;
- each output is written under a held name that names its job and file, and
  moved into place here, when its result is in hand, so a file reported failed
  (timed out, its worker or its cluster lost) is never written afterwards, and
  a process started after a crash can match a finished one to its job;
- results reach each job's listener in input order, progress as it comes;
- one interrupt path: on Ctrl-C or an error the executor's ``stop()`` runs with
  further Ctrl-C ignored, then one cleanup of held outputs and temporaries.
"""

from __future__ import annotations

from bgrm.run.base import (
    Done,
    Emit,
    Executor,
    Listener,
    Progress,
    Runner,
    Runtime,
    Task,
    Work,
    died,
    held_path,
    interrupts_ignored,
    process_task,
    run_task,
    timed_out,
)

__all__ = ["Done", "Emit", "Executor", "Listener", "Progress", "Runner", "Runtime", "Task",
           "Work", "died", "held_path", "interrupts_ignored", "process_task",
           "run_task", "timed_out"]
