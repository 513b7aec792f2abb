"""What changed in an account, as the webhook dispatcher needs to know it.

The API layer and the control API (a manager editing in amoCRM's UI) both describe each change of a
lead, contact or company as one :class:`EntityChange`; the dispatcher turns those into amoCRM's
form-encoded webhook bodies for every subscription whose ``settings`` ask for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from amobridge.sandbox.state import EntityType

ChangeAction = Literal["add", "update", "delete", "restore", "note"]


@dataclass(frozen=True)
class EntityChange:
    """One change of a lead, contact or company (API write, UI edit via the control API).

    ``snapshot`` is built by ``amobridge.sandbox.api.serialize.webhook_snapshot`` (its docstring
    lists the keys): already in webhook nesting and order, so flattening it gives amoCRM's form
    keys. ``old_*`` are set only when that value changed in this update.
    """

    entity_type: EntityType
    action: ChangeAction
    entity_id: int
    # A snapshot of the entity *after* the change (for delete: before it), in webhook terms: the
    # dispatcher reads fields from here rather than from live state, which may change again.
    snapshot: dict[str, Any] = field(default_factory=dict)
    old_status_id: int | None = None
    old_pipeline_id: int | None = None
    old_responsible_user_id: int | None = None
    # Set for action "note": the note's id, type and text.
    note: dict[str, Any] | None = None

    @property
    def status_changed(self) -> bool:
        return self.old_status_id is not None and self.old_status_id != self.snapshot.get(
            "status_id"
        )

    @property
    def responsible_changed(self) -> bool:
        return self.old_responsible_user_id is not None and (
            self.old_responsible_user_id != self.snapshot.get("responsible_user_id")
        )
