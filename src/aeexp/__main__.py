"""``python -m aeexp`` runs one experiment (or a sweep with ``-m``)."""

from aeexp.cli import entry

if __name__ == "__main__":
    entry()
