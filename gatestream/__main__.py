"""``python -m gatestream``: the command line (gatestream.cli)."""

from gatestream.cli import main

main()
