"""``python -m fleetd.ctl``: run fleetctl."""

import sys

from fleetd.ctl.main import main

sys.exit(main(sys.argv[1:]))
