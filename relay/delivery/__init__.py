"""Delivery out: workers that lease the spool, the upstream pool, and DSNs."""
