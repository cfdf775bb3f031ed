"""Accounts: standing (active, suspended, terminated), authentication, statistics."""
