"""`python -m dynalora ...` runs the same CLI as the `dynalora` console script (torchrun needs `-m dynalora`)."""

from dynalora.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
