"""Policies: one module each, named as its config section (see relay.policy)."""
