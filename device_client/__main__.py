"""``python -m device_client --config device.toml``."""

import sys

from device_client.cli import main

sys.exit(main())
