"""Consent: confirmed opt-in subscriptions and the opt-out action."""
