"""``ModelHomeRouter``: Serve's request router for the replicas, by the checkpoint a job needs.

- A job whose model (its multiplexed id, the checkpoint's sha256) has a home goes to the replicas that
  hold it, and only to them: a busy home is waited for (the replica queues the job on its own worker),
  never bypassed for an idle replica that would have to swap models.
- A model with no home goes to the replica with the fewest models, the least recently used first;
  that choice is remembered at once (``on_request_routed``), so a burst of jobs for new models spreads
  over the replicas before any replica has reported what it holds.
- A job with no model (an Extras job) goes to the least busy replica (all of them, least recent first).

Serve's own multiplex routing falls back to any replica after one missed queue-length answer, which on a
loaded machine makes a stream of mixed models swap; this router is the rule the issue asks for.
The router runs in the ingress process (the deployment handle's caller). Public API: ``ray.serve.request_router``.
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

CLAIM_S = 30.0  # how long a new home chosen here counts before the replica reports it itself


class ModelHomeRouter(RequestRouter):
    # A replica running a job answers Serve's queue-length probe late when its one core is busy: wait
    # longer than Serve's 0.1 s before a probe counts as missed (the job then waits for its home anyway).
    queue_len_response_deadline_s = 0.5
    max_queue_len_response_deadline_s = 5.0

    def initialize_state(self, **kwargs: Any) -> None:
        self._claims: dict[str, tuple[ReplicaID, float]] = {}  # model id -> replica chosen as its home, when
        self._last_used: dict[ReplicaID, float] = {}

    def _claimed(self, model_id: str) -> ReplicaID | None:
        claim = self._claims.get(model_id)
        if claim is None or time.monotonic() - claim[1] > CLAIM_S:
            return None
        return claim[0]

    def _models_of(self, replica: RunningReplica) -> set[str]:
        held = set(replica.multiplexed_model_ids)
        held.update(m for m in self._claims if self._claimed(m) == replica.replica_id)
        return held

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        model_id = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
        if model_id:
            homes = [r for r in candidate_replicas if model_id in self._models_of(r)]
            if homes:
                return [homes]
        ranked = sorted(
            candidate_replicas,
            key=lambda r: (len(self._models_of(r)) if model_id else 0, self._last_used.get(r.replica_id, 0.0)),
        )
        return [[r] for r in ranked]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        self._last_used[replica_id] = time.monotonic()
        model_id = pending_request.metadata.multiplexed_model_id
        if model_id and self._claimed(model_id) is None:
            self._claims[model_id] = (replica_id, time.monotonic())

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        for model_id in [m for m, (rid, _) in self._claims.items() if rid == replica_id]:
            del self._claims[model_id]
        self._last_used.pop(replica_id, None)
