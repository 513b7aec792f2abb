"""The proxy has no background work: every call is forwarded while its caller waits."""
