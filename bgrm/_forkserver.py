"""Imported only by the pool's fork server, before it forks any worker.

Workers ignore Ctrl-C (the parent decides what it means), but they set that
themselves only once running; the fork server passes its own SIGINT handling
on to each child, so ignoring it here closes the window in between, where a
Ctrl-C would end a starting worker with a traceback.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
