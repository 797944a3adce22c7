"""`python -m brainseg` is the `brainseg` command."""

from brainseg.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
