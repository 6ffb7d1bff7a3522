"""One server shared by the tests of a module, kept apart per test.

Each test submits its own datasets through a :class:`Harness`, which suspends them when the
test ends: their tasks can no longer be claimed, and leave the queue to the next test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from iceprod_server.client import IceProdClient, RPCError
from tests.support.datasets import config
from tests.support.servers import ServerProcess


@dataclass
class Base:
    srv: ServerProcess
    pilot_key: str
    owner: IceProdClient
    admin: IceProdClient

    @classmethod
    def start(cls, module_server: Any, db_url: str, env: dict[str, str]) -> Base:
        srv: ServerProcess = module_server(db_url, env=env)
        dep = srv.deployment
        return cls(srv, dep.passkey("pilot"), srv.client(dep.passkey("user", "alice")),
                   srv.client(dep.passkey("admin", "admin1")))


@dataclass
class Harness:
    base: Base
    datasets: list[str] = field(default_factory=list)
    _pilots: int = 0

    @property
    def srv(self) -> ServerProcess:
        return self.base.srv

    @property
    def owner(self) -> IceProdClient:
        return self.base.owner

    @property
    def public(self) -> IceProdClient:
        return self.srv.client()

    def pilot(self) -> IceProdClient:
        """A new pilot: the shared pilot passkey with a pilot_ref of its own."""
        self._pilots += 1
        return self.srv.client(self.base.pilot_key, pilot_ref=f"pilot{self._pilots}",
                               retries=0)

    def submit(self, cfg: dict[str, Any] | None = None, njobs: int = 1,
               **kwargs: Any) -> str:
        dataset_id: str = self.owner.call("submit_dataset", config=cfg or config(),
                                          description=kwargs.pop("description", "test"),
                                          njobs=njobs, **kwargs)
        self.datasets.append(dataset_id)
        return dataset_id

    def task(self, task_id: str) -> dict[str, Any]:
        info: dict[str, Any] = self.public.call("public_get_task", task_id=task_id)
        return info

    def dataset_status(self, dataset_id: str) -> str:
        status: str = self.public.call("public_get_dataset", dataset_id=dataset_id)["status"]
        return status

    def close(self) -> None:
        for dataset_id in self.datasets:
            try:
                self.base.admin.call("suspend_dataset", dataset_id=dataset_id)
            except RPCError as e:
                if e.code != -32004:  # a complete dataset cannot be suspended
                    raise
