"""Repositories of architectures, their evaluations (and the claims on them) and the proxy-score cache."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from ._repository import Repository
from ._retry import retry
from ._schema import (
    ArchitectureRow,
    ArtifactRow,
    ClaimRow,
    EvaluationRow,
    ProxyScoreRow,
    _aware,
    _utcnow,
)


class EvaluationsRepo(Repository):
    """Architectures by hash, evaluations per fidelity, claims of architectures in training."""

    def put_architecture(self, spec_hash: str, family: str, spec_json: str) -> None:
        """Insert once; concurrent inserts of the same hash are harmless."""
        def go() -> None:
            with self.session() as s:
                if s.get(ArchitectureRow, spec_hash) is None:
                    s.add(ArchitectureRow(spec_hash=spec_hash, family=family, spec_json=spec_json))
        with contextlib.suppress(IntegrityError):  # another worker inserted it first
            go()

    def get_architecture(self, spec_hash: str) -> str | None:
        with self.session() as s:
            row = s.get(ArchitectureRow, spec_hash)
            return row.spec_json if row else None

    def get_evaluation(self, spec_hash: str, fidelity_key: str) -> EvaluationRow | None:
        with self.session() as s:
            return s.scalars(select(EvaluationRow).where(EvaluationRow.spec_hash == spec_hash,
                                                         EvaluationRow.fidelity_key == fidelity_key)).first()

    def evaluated_at(self, fidelity_key: str, limit: int | None = None) -> list[tuple[str, float, str]]:
        """The architectures evaluated at ``fidelity_key`` (the ``limit`` most accurate; None: all): (spec hash,
        validation accuracy, spec JSON), most accurate first."""
        with self.session() as s:
            rows = s.execute(select(EvaluationRow.spec_hash, EvaluationRow.val_accuracy, ArchitectureRow.spec_json)
                             .join(ArchitectureRow, ArchitectureRow.spec_hash == EvaluationRow.spec_hash)
                             .where(EvaluationRow.fidelity_key == fidelity_key)
                             .order_by(EvaluationRow.val_accuracy.desc(), EvaluationRow.spec_hash)
                             .limit(limit)).all()
        return [(h, float(a), js) for h, a, js in rows]

    def put_evaluation(self, spec_hash: str, fidelity_key: str, fidelity: dict[str, Any], *, val_accuracy: float,
                       cost: dict[str, Any], seconds: float, epochs_run: int, curve: list[float | None],
                       artifact_key: str | None, artifact: bytes | None = None) -> EvaluationRow:
        """Record an evaluation; if another worker recorded the same one first, return theirs.

        With ``artifact`` (the weights' bytes), the artifact is stored under ``artifact_key`` in the
        same transaction, and only if this evaluation is the one recorded: the stored weights are
        always those of the stored accuracy, whichever of two concurrent trainings came first.
        """
        def insert() -> EvaluationRow:
            row = EvaluationRow(spec_hash=spec_hash, fidelity_key=fidelity_key, fidelity_json=json.dumps(fidelity),
                                val_accuracy=val_accuracy, cost_json=json.dumps(cost), seconds=seconds,
                                epochs_run=epochs_run, curve_json=json.dumps(curve), artifact_key=artifact_key)
            try:
                with self.session() as s:
                    s.add(row)
                    if artifact is not None and artifact_key is not None:
                        s.flush()  # the evaluation first: a duplicate rolls back before any weights are written
                        stored = s.get(ArtifactRow, artifact_key)
                        if stored is None:
                            s.add(ArtifactRow(key=artifact_key, data=artifact, size=len(artifact)))
                        else:
                            stored.data, stored.size = artifact, len(artifact)
                return row
            except IntegrityError:
                existing = self.get_evaluation(spec_hash, fidelity_key)
                if existing is not None:
                    return existing
                raise  # not the evaluation: the artifact row, inserted by another writer meanwhile

        return retry(insert, retryable=lambda e: isinstance(e, IntegrityError), attempts=3, delay=0.0, max_delay=0.0)

    # ------------------------------------------------------------------ claims of architectures in training
    # Which trial trains an architecture at a fidelity now (``storage._schema.ClaimRow``, schema
    # version 6), so that no two trials train it at once. Claims are taken under the lock ``claims``.

    def claim_evaluation(self, spec_hash: str, fidelity_key: str, owner: str, *, grace: float) -> ClaimRow:
        """Claim the training of ``spec_hash`` at ``fidelity_key`` for ``owner``, whose heartbeat
        (:meth:`refresh_claim`) comes at least every ``grace`` seconds.

        Returns the claim that holds now: ``owner``'s when the evaluation was free, already
        ``owner``'s, or held by a dead owner (silent for longer than *its* grace: it is taken
        over); else the live claim of another owner (compare ``.owner``).
        """
        now = _utcnow()
        with self.lock("claims"), self.session() as s:
            row = s.get(ClaimRow, (spec_hash, fidelity_key))
            if row is None:
                row = ClaimRow(spec_hash=spec_hash, fidelity_key=fidelity_key, owner=owner, claimed_at=now,
                               heartbeat_at=now, grace_s=float(grace))
                s.add(row)
                return row
            if row.owner == owner or (now - _aware(row.heartbeat_at)).total_seconds() > row.grace_s:
                row.owner, row.claimed_at, row.heartbeat_at, row.grace_s = owner, now, now, float(grace)
            return row

    def refresh_claim(self, spec_hash: str, fidelity_key: str, owner: str) -> bool:
        """The heartbeat of ``owner``'s claim; False when it is no longer ``owner``'s (taken over)."""
        with self.session() as s:
            res = s.execute(update(ClaimRow).where(ClaimRow.spec_hash == spec_hash,
                                                   ClaimRow.fidelity_key == fidelity_key, ClaimRow.owner == owner)
                            .values(heartbeat_at=_utcnow()))
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def release_claim(self, spec_hash: str, fidelity_key: str, owner: str) -> None:
        """Drop ``owner``'s claim (a claim taken over by another owner meanwhile stays theirs)."""
        with self.session() as s:
            s.execute(delete(ClaimRow).where(ClaimRow.spec_hash == spec_hash, ClaimRow.fidelity_key == fidelity_key,
                                             ClaimRow.owner == owner))

    def get_claim(self, spec_hash: str, fidelity_key: str) -> ClaimRow | None:
        """The claim on ``spec_hash`` at ``fidelity_key`` (live or stale), None when there is none."""
        with self.session() as s:
            return s.get(ClaimRow, (spec_hash, fidelity_key))

    def set_test_accuracy(self, spec_hash: str, fidelity_key: str, accuracy: float) -> None:
        with self.session() as s:
            s.execute(update(EvaluationRow).where(EvaluationRow.spec_hash == spec_hash,
                                                  EvaluationRow.fidelity_key == fidelity_key)
                      .values(test_accuracy=accuracy))


class ProxyCacheRepo(Repository):
    """Zero-cost proxy scores of an architecture, per input key."""

    def get_proxy_scores(self, spec_hash: str, input_key: str) -> dict[str, float]:
        """The cached proxy scores of an architecture for one input key, by proxy name."""
        with self.session() as s:
            rows = s.scalars(select(ProxyScoreRow).where(ProxyScoreRow.spec_hash == spec_hash,
                                                         ProxyScoreRow.input_key == input_key)).all()
            return {r.proxy: float(r.value) for r in rows}

    def put_proxy_scores(self, spec_hash: str, input_key: str, input_info: dict[str, Any],
                         scores: dict[str, float], seconds: float = 0.0) -> None:
        """Cache scores; one another worker stored first is kept (same inputs, same score)."""
        for proxy, value in scores.items():
            try:
                with self.session() as s:
                    s.add(ProxyScoreRow(spec_hash=spec_hash, input_key=input_key, input_json=json.dumps(input_info),
                                        proxy=proxy, value=float(value), seconds=seconds))
            except IntegrityError:
                continue
