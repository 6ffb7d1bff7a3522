"""The states of datasets, jobs and tasks (SPEC section 4).

The lowest layer: the models, the scheduler, the pages, the metrics and the command line
all name states from here, and this module imports nothing of the project.
"""

from __future__ import annotations

DATASET_STATES = ("processing", "suspended", "truncated", "errors", "complete")
JOB_STATES = ("processing", "suspended", "errors", "complete")
TASK_STATES = ("idle", "waiting", "queued", "processing", "complete", "suspended", "failed",
               "reset", "resume")
# the order people read them in: the way work flows, the final states last
TASK_STATES_SHOWN = ("idle", "waiting", "queued", "processing", "reset", "resume",
                     "suspended", "failed", "complete")
