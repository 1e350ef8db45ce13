import sys

from lo2.cli import main

sys.exit(main())
