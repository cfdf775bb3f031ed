"""Feedback back: complaint and bounce intake, report parsing, and cases."""
