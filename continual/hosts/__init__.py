"""Hosts: frozen VLPs wrapped with named sites for PEFT methods."""
