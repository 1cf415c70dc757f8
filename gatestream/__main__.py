from gatestream.cli import main

main()
