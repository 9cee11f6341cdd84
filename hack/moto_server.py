"""moto's server (`moto_server`) with hack/moto_extras.py loaded first: test tooling.

Run with the Python of the virtualenv of hack/install-moto.sh; takes moto_server's
arguments (`-H HOST -p PORT`).
"""

import sys

import moto_extras  # noqa: F401  (beside this file; registers its models on import)
from moto.server import main

if __name__ == "__main__":
    sys.exit(main())
