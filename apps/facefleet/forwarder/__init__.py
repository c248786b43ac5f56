"""The forwarder service."""
