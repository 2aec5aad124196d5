"""How `make test` shares the suite out between two pytest-xdist workers (`-n 2 --dist loadgroup`).

- Every test of a module that uses the shared service (`service`, `extra_shim`) runs on one
  worker, so the session's one real vLLM is started once.
- Every other module runs whole on one worker, so its module-scoped fixtures start once.
- Modules marked `launcher` (real vLLMs of their own) are queued first, so their engine starts,
  which leave a core idle, overlap the shared service's tests on the other worker.
Within a module, and across the shared service's modules, tests run in collection order.

The groups are worked out where fixtures are known: on the workers, at collection (each worker
collects the same tests). xdist's own grouping (the `xdist_group` mark, which it appends to node
ids) does not reach its scheduler with pytest 9, whose node ids are no longer strings set on the
item; so the workers write the groups to a file named by the run's id, and the scheduler here
(in the controller) reads it when it shares the collection out.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

SHARED_ENGINE = "shared-engine"


def groups_file(testrunuid: str) -> Path:
    return Path(tempfile.gettempdir()) / f"pytest-groups-{testrunuid}.json"


def configure(config: pytest.Config) -> None:
    """Controller: a run id of our own (xdist hands it to the workers), so that the workers and
    the scheduler name the same file."""
    if not hasattr(config, "workerinput") and config.getoption("testrunuid", None) is None:
        config.option.testrunuid = uuid.uuid4().hex


def order_and_record(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Worker: the queue order (shared service's modules, then `launcher` modules, then the rest)
    and each test's group, written for the scheduler."""
    shared = {item.path for item in items if "service" in item.fixturenames}
    items.sort(key=lambda item: 0 if item.path in shared else 1 if item.get_closest_marker("launcher") else 2)
    groups = {item.nodeid: SHARED_ENGINE if item.path in shared else item.nodeid.split("::")[0]
              for item in items}
    path = groups_file(config.workerinput["testrunuid"])  # type: ignore[attr-defined]
    part = path.with_suffix(f".{os.getpid()}")
    part.write_text(json.dumps(groups))
    os.replace(part, path)  # every worker writes the same groups: the last one stays


def unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and config.getoption("testrunuid", None):
        groups_file(config.option.testrunuid).unlink(missing_ok=True)


class GroupScheduling(LoadScopeScheduling):
    """xdist's scope scheduling (a scope goes whole to one worker, scopes handed out as workers
    free up) with the scopes above."""

    def __init__(self, config: pytest.Config, log=None) -> None:
        super().__init__(config, log)
        self._groups: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self._groups is None:  # first called once every worker has sent its collection
            self._groups = json.loads(groups_file(self.config.option.testrunuid).read_text())
        return self._groups[nodeid]
