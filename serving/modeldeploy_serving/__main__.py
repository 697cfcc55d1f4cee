"""`python -m modeldeploy_serving` is `modeldeploy-server`."""

import sys

from modeldeploy_serving.cli import main

sys.exit(main())
