"""Pipeline steps: one module per step, each a plain function over files."""
