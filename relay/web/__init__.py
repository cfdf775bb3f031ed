"""The web: the HTTP server, unsubscribe pages, subscription forms and the APIs."""
