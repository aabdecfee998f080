"""``python -m aeexp`` runs one experiment (or a sweep with ``-m``)."""

from aeexp.cli import main

if __name__ == "__main__":
    main()
