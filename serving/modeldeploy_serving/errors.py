"""The server's own errors; each carries the HTTP status a client should see."""


class ServingError(Exception):
    """Base of errors that are answered to the client with `status_code` and the message."""

    status_code = 500


class InvalidInput(ServingError):
    """The request is malformed or does not fit the model (the client's fault)."""

    status_code = 400


class RequestTooLarge(ServingError):
    """The request body is larger than the server accepts."""

    status_code = 413


class ModelNotFound(ServingError):
    """The request names a model or version this server does not serve."""

    status_code = 404


class ModelNotReady(ServingError):
    """The model is still loading or warming up."""

    status_code = 503


class ArtifactError(Exception):
    """The artifact cannot be fetched, verified or loaded; the message says why."""


class FetchError(ArtifactError):
    """The artifact could not be fetched or verified; the message is for the person who deploys."""
