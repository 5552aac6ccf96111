"""The ways into envctl: the `envctl` CLI (and, later, the HTTP API and its client)."""
