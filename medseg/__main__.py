"""`python -m medseg ...`, which is also what `torchrun -m medseg train ...` runs."""

from medseg.cli.main import main

if __name__ == "__main__":
    main()
