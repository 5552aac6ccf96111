"""The `envctl` command line (`cli.main`): the same commands embedded (a service in-process) or
through a server, and the operator's admin commands."""
