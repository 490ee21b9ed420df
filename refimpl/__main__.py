from refimpl.apps.cli import main

main()
