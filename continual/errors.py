"""The one base class of every refusal: bad input, a run folder that cannot be used, a training that diverged.

The CLI prints a ``ContinualError``'s message on one line and exits 2; anything
else is a bug and keeps its traceback. Each package derives its own errors from
it (``tasks.errors.DataError``, ``prompts.MethodError``, ...): this module imports
nothing, so every layer may import it.
"""


class ContinualError(Exception):
    """A refusal whose message names the file, key or step at fault and what was expected."""


class NonFiniteError(ContinualError, FloatingPointError):
    """Training diverged: a loss, gradient, weight or prediction became NaN or infinite."""


class RunError(ContinualError):
    """A run folder that cannot be used as asked (another config in it, nothing to resume, no results)."""


class IntegrityError(ContinualError):
    """A frozen tensor (host or earlier module) changed while a new module trained."""
