"""Built-in stand-in overlays (`harness run SUITE --stand-in NAME`), see `harness.stand_in`."""
