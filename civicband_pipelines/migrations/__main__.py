"""`python -m civicband_pipelines.migrations "message"`: write the next revision (see __init__)."""

import sys

from . import new_revision

if len(sys.argv) != 2:
    sys.exit('usage: python -m civicband_pipelines.migrations "what the revision does"')
print(f"wrote {new_revision(sys.argv[1])}: review it before committing")
