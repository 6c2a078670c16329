"""`python -m gpufaas.gateway.cli ARGS`: the same as `gpufaas ARGS`, for a child process that must run this
interpreter's install whatever is on PATH (`loadgen.fidelity_study` runs each fidelity run so)."""

from gpufaas.gateway.cli import main

if __name__ == "__main__":
    main()
