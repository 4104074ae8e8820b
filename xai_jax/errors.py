"""The one exception type the library raises for bad input."""


class XaiJaxError(Exception):
    """Bad input or a missing resource, described in one line for the user.

    The command line prints ``xai-jax: error: <message>`` and exits with status 2;
    everything else (bugs) keeps its traceback.
    """


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM (installed by the command line), so that
    the same clean-up as for Ctrl-C runs: temporary outputs are removed, nothing half-written stays.

    A ``BaseException`` like ``KeyboardInterrupt``, so that ``except Exception`` blocks do not swallow it.
    """
