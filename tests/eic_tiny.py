"""``python -m tests.eic_tiny ARGS``: the eic command with the tests' tiny net registered, for tests that run eic
in other processes (torchrun, kill and resume) on a run of the tiny net."""

from europeana_imgcls.cli.app import main

from . import tiny  # noqa: F401  registers "tiny"

if __name__ == "__main__":
    main()
