"""SMTP in: listeners, sessions, the submission handler and the relay's own inbound addresses."""
