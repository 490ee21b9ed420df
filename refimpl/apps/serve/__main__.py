import sys

from refimpl.apps.serve.cli import main

sys.exit(main())
