"""Backends run instances behind one narrow protocol (`interface.Backend`): sim, fake, process, docker, ray."""
