"""`python -m bulkprompt ...`: the command line, as the installed binary gives it."""

import os
import sys

from . import binary

if __name__ == "__main__":
    path = binary()
    os.execv(path, [path, *sys.argv[1:]])
