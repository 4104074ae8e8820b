"""The one exception type the library raises for bad input."""


class XaiJaxError(Exception):
    """Bad input or a missing resource, described in one line for the user.

    The command line prints ``xai-jax: error: <message>`` and exits with status 2;
    everything else (bugs) keeps its traceback.
    """
