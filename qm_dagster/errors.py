"""Errors raised at the dataset boundary: each names the file, the record and what is wrong."""

from __future__ import annotations


class QmError(Exception):
    """Base class of every error qm-dagster raises on purpose."""


class DatasetError(QmError):
    """Malformed dataset input: names the file, the JSON path of the record and the problem."""

    def __init__(self, file: str, where: str, problem: str):
        self.file = file
        self.where = where
        self.problem = problem
        location = f"{file} at {where}" if where else file
        super().__init__(f"{location}: {problem}")


class VersionNameError(QmError):
    """A dataset version name outside ``[A-Za-z0-9._-]{1,128}``."""


class MetricError(QmError):
    """A metric definition that cannot be registered or selected."""


class StorageError(QmError):
    """The object store did not serve an object (unreachable, throttling, timeouts) after the
    bounded retries: names the object; an infrastructure failure, never a data issue."""

    def __init__(self, url: str, message: str):
        self.url = url
        super().__init__(message)

    def __reduce__(self):  # crosses process pools intact
        return (StorageError, (self.url, str(self)))

    @classmethod
    def unanswered(cls, url: str, cause: BaseException) -> StorageError:
        return cls(
            url,
            f"{url}: the store did not answer after its retries ({type(cause).__name__}: {cause})",
        )
