"""The client of an envctl server: resolve, builds, logs and metadata over HTTP (`client.http`),
with the error kinds of the service. It imports no server part."""
