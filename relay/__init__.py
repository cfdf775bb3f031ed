"""optin-relay: an SMTP relay that lets only permission-based mail through."""

__version__ = "0.1.0"
