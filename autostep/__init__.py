"""autostep: workflows of typed Python functions, run as nameko services.

The public API for writing step functions::

    from autostep import PermanentError, RetryableError, StepContext, function
"""

from autostep.exceptions import PermanentError, RetryableError
from autostep.sdk import StepContext, function

__all__ = ["PermanentError", "RetryableError", "StepContext", "function"]
__version__ = "0.1.0"
