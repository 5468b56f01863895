import sys

from vilbert.cli.main import main

sys.exit(main())
