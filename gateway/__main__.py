"""`python -m gpufaas.gateway [flags]`: the same as `gpufaas up [flags]` (the demo starts the gateway this way)."""

import sys

from gpufaas.gateway.cli import main

if __name__ == "__main__":
    main(["up", *sys.argv[1:]])
