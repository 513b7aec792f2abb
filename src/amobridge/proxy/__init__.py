"""The amoCRM proxy: ``/proxy/{owner}/api/v4/{path}`` forwards any amoCRM API v4 call with the
owner's managed tokens, pace, retries of reads and ban breaker, so a host backend reaches the
endpoints amobridge does not model without ever holding a token (see ``docs/proxy.md``)."""
