import sys

from plasticrl.lab.cli import main

sys.exit(main())
