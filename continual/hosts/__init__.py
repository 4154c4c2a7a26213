"""Hosts: frozen VLPs wrapped with named sites for PEFT methods; importing this package registers them."""
from continual.hosts import dual_encoder, grounding_dino, vilt  # noqa: F401  (their decorators fill HOSTS)
