"""amoCRM's endpoints, one resource class per group; each talks only through a ``Requester``."""

from amobridge.amo._requester import Requester
from amobridge.amo.resources.account import AccountResource
from amobridge.amo.resources.base import (
    COMPLEX_MAX_CHUNK_SIZE,
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_PAGE_LIMIT,
    AmoLookupError,
    EntityFilters,
    LeadFilters,
    encode_params,
)
from amobridge.amo.resources.companies import CompaniesResource
from amobridge.amo.resources.contacts import ContactsResource
from amobridge.amo.resources.custom_fields import CustomFieldsResource
from amobridge.amo.resources.leads import LeadsResource
from amobridge.amo.resources.notes import NotesResource
from amobridge.amo.resources.pipelines import PipelinesResource
from amobridge.amo.resources.tags import TagsResource
from amobridge.amo.resources.users import UsersResource
from amobridge.amo.resources.webhooks import WebhooksResource


class Endpoints:
    """Every resource over one requester: ``AmoClient`` exposes these as its attributes
    (``amo.leads``, ``amo.pipelines``, …)."""

    def __init__(self, requester: Requester) -> None:
        self.account = AccountResource(requester)
        self.users = UsersResource(requester)
        self.pipelines = PipelinesResource(requester)
        self.leads = LeadsResource(requester)
        self.contacts = ContactsResource(requester)
        self.companies = CompaniesResource(requester)
        self.tags = TagsResource(requester)
        self.notes = NotesResource(requester)
        self.custom_fields = CustomFieldsResource(requester)
        self.webhooks = WebhooksResource(requester)


__all__ = [
    "COMPLEX_MAX_CHUNK_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_PAGE_LIMIT",
    "AccountResource",
    "AmoLookupError",
    "CompaniesResource",
    "ContactsResource",
    "CustomFieldsResource",
    "Endpoints",
    "EntityFilters",
    "LeadFilters",
    "LeadsResource",
    "NotesResource",
    "PipelinesResource",
    "TagsResource",
    "UsersResource",
    "WebhooksResource",
    "encode_params",
]
