import sys

from plasticrl.cli import main

sys.exit(main())
