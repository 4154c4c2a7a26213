"""The error type for bad task data: it names the file and what was expected."""
from continual.errors import ContinualError


class DataError(ContinualError, ValueError):
    """Raised for any input data the project refuses (COCO files, images, worlds)."""
