"""``python -m worker`` is ``artifactd``."""

from worker.cli import main

main()
