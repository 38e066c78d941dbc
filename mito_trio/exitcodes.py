"""Process exit codes of `mito worker`, documented in the README and in `--help`."""

from enum import IntEnum


class ExitCode(IntEnum):
    """Why the worker process ended."""

    #: A requested stop: a signal, the coordinator removed the worker, or the lifetime ended.
    OK = 0
    #: An unexpected internal error, or a fatal answer from the coordinator while running.
    INTERNAL_ERROR = 1
    #: The configuration (file, environment or flags) is invalid.
    CONFIG_ERROR = 2
    #: Login or registration was refused by the coordinator.
    AUTH_ERROR = 3
    #: The coordinator could not be reached at start.
    UNREACHABLE = 4


EXIT_CODE_HELP = """\
Exit codes:
  0  stopped on request (signal, stop through the coordinator, lifetime end)
  1  internal error, or a fatal answer from the coordinator while running
  2  invalid configuration
  3  login or registration refused
  4  coordinator unreachable at start"""
